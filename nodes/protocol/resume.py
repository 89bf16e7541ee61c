"""What a client that may have missed chunks gets back (`resume`), with no transport in it.

A stream the edge still holds answers with its state so far (every token, the text, the next
sequence number) or, once it ended, its last message again; a finished stream's last message is
kept for a while (`RecentStreams`) so a client that lost it can still learn how it ended. Every
answer is marked `resync`: the client replaces what it has instead of appending. Only the inbox the
request named may resume it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from nodes.protocol.request import EdgeRequest
from schemas.codec import Int32Array
from schemas.messages import ErrorMsg, TokenChunk

RECENT_KEEP = 1024      # finished streams whose last message is kept to answer `resume`
RECENT_KEEP_S = 120.0

Terminal = TokenChunk | ErrorMsg


def as_resync(terminal: Terminal) -> Terminal:
    return replace(terminal, resync=True) if isinstance(terminal, TokenChunk) else terminal


def held_state(request_id: str, r: EdgeRequest | None, terminal: Terminal | None) -> Terminal | None:
    """The answer for a stream this edge holds: its last message if it ended, else its state so far
    (None: nothing streamed yet, so there is nothing to replace)."""
    if terminal is not None:
        return as_resync(terminal)
    if r is None or r.round == 0:
        return None
    text = getattr(r.detok, "emitted", None)
    return TokenChunk(request_id, r.round - 1, Int32Array(), "", False, None, r.round, len(r.out),
                      Int32Array(r.out), text, resync=True)


class RecentStreams:
    """Finished streams' last messages, the newest `keep` of them and none older than `keep_s`."""

    def __init__(self, keep: int = RECENT_KEEP, keep_s: float = RECENT_KEEP_S):
        self.keep, self.keep_s = keep, keep_s
        self._ended: OrderedDict[str, tuple[str, Terminal, float]] = OrderedDict()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ended

    def __len__(self) -> int:
        return len(self._ended)

    def remember(self, request_id: str, inbox: str | None, terminal: Terminal | None, started: bool,
                 now: float) -> None:
        """Keep a finished stream's last message; not a refusal before any work (`started` False): the
        client sends that request again, and an old refusal must not make it do so twice."""
        if terminal is None or inbox is None or not started:
            return
        self._ended[request_id] = (inbox, terminal, now)
        self._ended.move_to_end(request_id)
        while self._ended and (len(self._ended) > self.keep or now - next(iter(self._ended.values()))[2] > self.keep_s):
            self._ended.popitem(last=False)

    def answer(self, request_id: str, inbox: str) -> Terminal | None:
        """The stream's last message again, for the inbox it went to (None for any other)."""
        held = self._ended.get(request_id)
        if held is None or held[0] != inbox:
            return None
        return as_resync(held[1])
