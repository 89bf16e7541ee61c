"""UTF-8-safe incremental detokenization: one token may be half a character."""
from __future__ import annotations


class IncrementalDetokenizer:
    """Emits only text that can no longer change (no trailing U+FFFD), decoding a short window."""

    def __init__(self, tokenizer, skip_ids: frozenset[int] = frozenset()):
        self.tok = tokenizer
        self.skip = skip_ids
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.emitted = ""  # every piece of text returned so far, concatenated

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in self.skip], skip_special_tokens=True)

    def feed(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            piece = after[len(before) :]
            self.emitted += piece
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is left at the end of the stream (replacement chars included)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        piece = after[len(before) :]
        self.emitted += piece
        return piece

    def flush_all(self) -> str:
        """The whole stream's text (for the last chunk), independent of what was emitted."""
        return self._decode(self.ids)
