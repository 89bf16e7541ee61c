"""Byte-level tokenizer for the bundled pair: token id == byte value, plus <eos> and <pad>.

Built with `tokenizers` and saved as a standard `tokenizer.json`, so plain
`AutoTokenizer.from_pretrained(path)` loads it offline like any hub tokenizer.
"""
from __future__ import annotations

from pathlib import Path

EOS_TOKEN = "<eos>"
PAD_TOKEN = "<pad>"
EOS_ID = 256
PAD_ID = 257
VOCAB_SIZE = 258


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map used by ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_tokenizer():
    """Return a `PreTrainedTokenizerFast` whose ids 0..255 are the raw bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab[EOS_TOKEN] = EOS_ID
    vocab[PAD_TOKEN] = PAD_ID
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, model_max_length=4096
    )


def save_tokenizer(path: str | Path) -> None:
    build_tokenizer().save_pretrained(str(path))
