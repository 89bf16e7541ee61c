"""`specstop generate` refuses what cannot work before it loads a model: one line, exit status 2."""
from __future__ import annotations

import pytest

from pipeline.cli import main


def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_more_new_tokens_than_the_bundled_context_is_refused(capsys):
    line = refused(capsys, ["generate", "--prompt", "x", "--max-new-tokens", "5000"])
    assert "exceeds the model's context of 4096 tokens" in line


def test_a_directory_without_config_json_is_refused(capsys, tmp_path):
    line = refused(capsys, ["generate", "--prompt", "x", "--draft", str(tmp_path)])
    assert "without config.json" in line


def test_a_missing_path_that_is_no_hub_id_is_refused(capsys, tmp_path):
    line = refused(capsys, ["generate", "--prompt", "x", "--target", str(tmp_path / "nope")])
    assert "does not exist" in line


@pytest.mark.parametrize("prompt_tokens,new,ok", [(1, 4095, True), (1, 4096, False), (4000, 97, False)])
def test_prompt_plus_new_tokens_must_fit_the_context(prompt_tokens, new, ok):
    from nodes.models.errors import ModelError
    from pipeline.cli.preflight import check_fits_context

    if ok:
        check_fits_context(prompt_tokens, new, 4096)
    else:
        with pytest.raises(ModelError):
            check_fits_context(prompt_tokens, new, 4096)


@pytest.mark.parametrize("argv,fragment", [
    (["cloud", "--target", "/no/such/model/dir"], "does not exist"),
    (["edge", "--draft", "."], "without config.json"),
])
def test_a_worker_refuses_a_model_path_before_looking_for_the_broker(capsys, argv, fragment):
    assert fragment in refused(capsys, argv + ["--nats", "nats://127.0.0.1:1"])
