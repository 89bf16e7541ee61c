"""Streaming text never splits a UTF-8 character and loses nothing."""
from nodes.detokenize import IncrementalDetokenizer
from nodes.models.byte_tokenizer import build_tokenizer


def test_multibyte_characters_are_held_until_complete():
    tok = build_tokenizer()
    text = "naïve → 東京 ok"
    ids = list(text.encode())
    det = IncrementalDetokenizer(tok)
    pieces = [det.feed([i]) for i in ids]
    assert "".join(pieces) + det.flush() == text
    assert all("\ufffd" not in p for p in pieces)


def test_special_tokens_are_not_rendered():
    tok = build_tokenizer()
    det = IncrementalDetokenizer(tok)
    assert det.feed([104, 105, tok.eos_token_id]) + det.flush() == "hi"
