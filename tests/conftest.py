"""Shared fixtures: the bundled model pair, tiny random pairs, and CLI runners."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import torch

TEST_THREADS = int(os.environ.get("SPECSTOP_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _torch_threads_as_the_suite_set_them():
    """An in-process CLI test runs `set_threads(--threads)`; the tests after it, and the processes they fork,
    must not inherit that thread count (two spinning threads per process oversubscribe two shared cores)."""
    yield
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)


def pytest_asyncio_loop_factories(config, item):
    """Async tests run on the loop the workers run on (uvloop; SPECSTOP_LOOP=asyncio for the standard one)."""
    from pipeline.transport import aio

    if aio.loop_name() == "uvloop":
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session")
def pair():
    from nodes.models.loading import load_pair

    return load_pair()


def tiny_llama(vocab: int, hidden: int, layers: int, seed: int, sharpness: float = 40.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512,
                      eos_token_id=None, bos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper, seed-dependent distributions than the default init gives
        model.lm_head.weight.mul_(sharpness)
    return model


@pytest.fixture(scope="session")
def tiny_pair():
    """A 4-token-vocabulary pair: the draft is the target's weights at a flatter temperature,
    so drafts are often but not always accepted (every path of the rule is exercised)."""
    from nodes.models.loading import ModelPair

    return ModelPair(tiny_llama(4, 16, 2, seed=2, sharpness=12.0), tiny_llama(4, 16, 2, seed=2), None, 4, frozenset(), "tiny-d", "tiny-t")


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real nats-server with JetStream on a free loopback port, for the whole test session."""
    from pipeline.transport.broker import EmbeddedBroker

    b = EmbeddedBroker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()
