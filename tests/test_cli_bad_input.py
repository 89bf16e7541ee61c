"""Bad input to the engine's command line: one clear error line, non-zero exit."""
import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # each test starts a Python process that imports torch (~2.5 s each)


def one_line_error(r, fragment):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert fragment in lines[0], lines[0]


def test_unknown_model_path(tmp_path):
    one_line_error(run_cli("generate", "--prompt", "x", "--target", str(tmp_path / "nope")), "does not exist")


def test_mismatched_tokenizers(tmp_path):
    from transformers import AutoTokenizer

    from nodes.models.loading import BUNDLED_DRAFT

    tok = AutoTokenizer.from_pretrained(BUNDLED_DRAFT)
    tok.add_tokens(["<extra>"])
    other = tmp_path / "other"
    tok.save_pretrained(other)
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        src = __import__("pathlib").Path(BUNDLED_DRAFT) / f
        if src.exists():
            (other / f).write_bytes(src.read_bytes())
    one_line_error(run_cli("generate", "--prompt", "x", "--draft", str(other)), "do not share a tokenizer")


def test_empty_prompt():
    one_line_error(run_cli("generate", "--prompt", ""), "prompt is empty")


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--max-length"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_lengths(flag, value):
    one_line_error(run_cli("generate", "--prompt", "x", flag, value), "must be >= 1")


@pytest.mark.parametrize("spec", ["fixed:0", "fixed:2000"])
def test_fixed_length_outside_one_to_the_maximum(spec):
    one_line_error(run_cli("generate", "--prompt", "x", "--policy", spec), "length must be in 1..8")


@pytest.mark.slow
def test_generate_json_has_the_documented_fields():
    r = run_cli("generate", "--prompt", "The with statement", "--max-new-tokens", "24", "--policy", "fixed:4", "--json")
    out = json.loads(r.stdout)
    assert {"token_ids", "text", "rounds", "accepted_per_round", "draft_ms", "verify_ms"} <= set(out)
    assert len(out["token_ids"]) <= 24 and len(out["accepted_per_round"]) == out["rounds"]
    ref = json.loads(run_cli("generate", "--prompt", "The with statement", "--max-new-tokens", "24",
                             "--policy", "target-only", "--json").stdout)
    assert ref["token_ids"] == out["token_ids"] and ref["rounds"] == len(ref["token_ids"])


@pytest.mark.parametrize("value", ["25", "2.5", "-1"])
def test_model_nice_out_of_range(value):
    one_line_error(run_cli("edge", "--model-nice", value), "--model-nice")


@pytest.mark.parametrize("args, fragment", [
    (("cloud", "--max-batch", "0"), "--max-batch: must be >= 1"),
    (("cloud", "--batch-wait-ms", "-1"), "--batch-wait-ms: must be >= 0"),
    (("cloud", "--slot-memory-mb", "0"), "--slot-memory-mb: must be >= 1"),
    (("cloud", "--max-rounds-per-edge", "0"), "--max-rounds-per-edge: must be >= 1"),
    (("cloud", "--max-sessions", "4", "--max-sessions-per-edge", "5"),
     "--max-sessions-per-edge (5) exceeds --max-sessions (4)"),
    (("bench", "verify", "--batches", "8,x"), "not a comma-separated list of integers"),
])
def test_batching_flags_out_of_range(args, fragment):
    one_line_error(run_cli(*args), fragment)


@pytest.mark.parametrize("args, fragment", [
    (("edge", "--ahead", "0"), "--ahead: must be an integer in 1..5, got 0"),
    (("edge", "--ahead", "6"), "--ahead: must be an integer in 1..5, got 6"),
    (("cloud", "--max-ahead", "-1"), "--max-ahead: must be >= 0"),
    (("cloud", "--max-ahead", "17"), "--max-ahead must be an integer in 0..16"),
    (("bench", "trees", "--live", "--ahead", "1"), "must list rounds in flight in 2..5"),
])
def test_rounds_in_flight_out_of_range(args, fragment):
    one_line_error(run_cli(*args), fragment)
