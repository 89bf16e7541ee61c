"""A command refuses what cannot work before it loads a model or looks for a broker: one line naming the
flag, exit status 2."""
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


@pytest.mark.parametrize("url", ["localhost:4222", "http://127.0.0.1:4222", "nats://:4222", "nats://host:99999",
                                 "nats://host:4222/path"])
def test_a_malformed_broker_url_is_refused_naming_the_flag(capsys, url):
    line = refused(capsys, ["run", "--nats", url])
    assert line == (f"specstop: error: --nats: '{url}' is not a broker URL (nats://HOST:PORT, tls://HOST:PORT, "
                    "ws:// or wss://)")


def test_a_malformed_broker_url_from_the_environment_names_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("SPECSTOP_NATS_URL", "127.0.0.1:4222")
    assert refused(capsys, ["control"]).startswith("specstop: error: $SPECSTOP_NATS_URL: '127.0.0.1:4222' is not")


@pytest.mark.parametrize("url", ["nats://127.0.0.1:4222", "tls://hub.example:4443", "nats://u:p@host", "wss://h/"])
def test_a_broker_url_of_each_scheme_nats_speaks_passes(url):
    from pipeline.cli.preflight import check_broker_url

    check_broker_url(url)


def test_a_missing_profile_is_refused_naming_the_flag(capsys, tmp_path):
    missing = tmp_path / "nope.json"
    line = refused(capsys, ["edge", "--profile", str(missing), "--nats", "nats://127.0.0.1:1"])
    assert line == f"specstop: error: --profile: profile {missing}: file not found"


def test_a_profile_that_is_not_json_is_refused_naming_the_flag(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    line = refused(capsys, ["generate", "--prompt", "x", "--profile", str(bad)])
    assert line.startswith(f"specstop: error: --profile: profile {bad}: not valid JSON")


def test_the_gateway_refuses_a_missing_tokenizer_before_looking_for_the_broker(capsys, tmp_path):
    line = refused(capsys, ["gateway", "--tokenizer", str(tmp_path / "nope"), "--nats", "nats://127.0.0.1:1"])
    assert line == f"specstop: error: --tokenizer '{tmp_path / 'nope'}' does not exist (not a local directory, " \
                   "not a hub id)"


def test_an_unknown_policy_benchmark_kind_is_refused_naming_the_flag(capsys):
    line = refused(capsys, ["bench", "policies", "--kinds", "short,nope"])
    assert line == ("specstop: error: --kinds: unknown kind nope (known: families, non-affine, jitter, streaky, "
                    "short, all)")
