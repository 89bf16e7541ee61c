"""The gateway's configuration and its defaults, in a module without uvicorn or NATS, so `specstop gateway`'s
parser shows (and passes on) these values instead of writing them a second time."""
from __future__ import annotations

from dataclasses import dataclass, field

from nodes.config import DRAIN_TIMEOUT_S, MAX_LENGTH
from nodes.protocol.admission import EdgeLimits
from pipeline.http.health import WINDOW_S

_EDGE = EdgeLimits()  # the gateway refuses what its edges would refuse, with the edges' own bounds


@dataclass(frozen=True)
class GatewayConfig:
    model_name: str = "specstop"
    max_in_flight: int = 256            # generations at once; beyond, 429
    max_tokens_limit: int = _EDGE.max_new_tokens  # largest max_tokens a request may ask for
    max_prompt_tokens: int = _EDGE.max_prompt_tokens
    max_context_tokens: int | None = None  # prompt + max_tokens must fit the model's context (None: unknown)
    default_completion_tokens: int = 16  # OpenAI's default for /v1/completions
    default_chat_tokens: int = 256
    request_timeout_s: float = 600.0    # a request's deadline unless `specstop.deadline_s` is shorter
    silence_timeout_s: float = 60.0     # no chunk for this long: 504
    max_length: int = MAX_LENGTH        # longest draft (for checking policy specs before sending them)
    max_body_bytes: int = 4 << 20       # one request body; over it: 413 (by Content-Length before reading)
    body_budget_bytes: int = 64 << 20   # bodies being read or parsed at once; over it: 429
    body_timeout_s: float = 30.0        # to send the body once the headers are in; after: 408
    header_timeout_s: float = 10.0      # to send the request line and headers; after: 408, closed
    max_header_bytes: int = 64 << 10    # request line + headers; over it: 431, closed
    max_connections: int = 1024         # open HTTP connections; the next one: 503, closed
    parse_threads: int = 2              # threads parsing bodies and tokenizing prompts (not the event loop)
    inline_body_bytes: int = 16 << 10   # a body this small is parsed on the loop (its work is bounded: ~0.1 ms)
    heartbeat_window_s: float = WINDOW_S  # an edge not heard from this long does not make /health ready
    timing_wait_s: float = 0.5          # how long a finished request waits for its last rounds' timing events
    edge_id: str | None = None          # front this edge only (its subjects; what a device's gateway may use)

    def __post_init__(self) -> None:
        if self.body_budget_bytes < self.max_body_bytes:
            raise ValueError("body_budget_bytes must be >= max_body_bytes (else no large body is ever admitted)")
        for name in ("max_body_bytes", "max_header_bytes", "max_connections", "parse_threads", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("body_timeout_s", "header_timeout_s", "heartbeat_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")



@dataclass
class GatewayOptions:
    http: str
    nats_url: str
    node_id: str = "gateway-1"
    log_file: str | None = None
    metrics: str | None = None       # a second /metrics listener (the HTTP port always serves /metrics)
    tokenizer: str | None = None     # counts prompt tokens and renders chat templates (default: the bundled pair's)
    config: GatewayConfig = field(default_factory=GatewayConfig)
    drain_timeout_s: float = DRAIN_TIMEOUT_S  # after SIGTERM: running generations may finish this long
