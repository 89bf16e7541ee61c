"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the HTTP status that fits."""
from __future__ import annotations

from dataclasses import dataclass

# edge/client error code -> (HTTP status, OpenAI error type, our code in the body)
EDGE_CODES: dict[str, tuple[int, str, str]] = {
    "no_responders": (503, "service_unavailable", "no_edge"),
    "no_verifier": (503, "service_unavailable", "no_verifier"),
    "unavailable": (503, "service_unavailable", "unavailable"),
    "edge_gone": (503, "service_unavailable", "edge_gone"),
    "draining": (503, "service_unavailable", "unavailable"),
    "overloaded": (429, "rate_limit_exceeded", "overloaded"),
    "deadline": (504, "timeout", "deadline"),
    "timeout": (504, "timeout", "deadline"),
    "too_long": (400, "invalid_request_error", "context_length_exceeded"),
    "bad_message": (400, "invalid_request_error", "invalid_request"),
    "too_large": (400, "invalid_request_error", "invalid_request"),
}


@dataclass
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def from_edge(code: str | None, message: str) -> APIError:
    """The HTTP error for a generation that ended with an edge (or client-side) error code."""
    status, kind, ours = EDGE_CODES.get(code or "", (500, "server_error", code or "internal"))
    if code == "no_responders":
        message = "no edge is serving generate requests (no responders on the broker)"
    elif code == "no_verifier" and "no verifier" not in message:
        message = f"no verifier reachable: {message}"
    return APIError(status, message, kind, None, ours)
