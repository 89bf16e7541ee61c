"""Every module a round uses runs on the pair's device and in the pair's dtype.

A CUDA edge once crashed because the acceptance head stayed a float32 CPU module while the draft ran on the
GPU. That bug is visible on a CPU too when the pair is loaded in bfloat16: a module left behind keeps float32
parameters (or is fed float32 tensors). So every policy's rounds run here with a bf16 pair under a global
forward hook that checks each called module's own parameters and buffers and every floating tensor in and out.
"""
from __future__ import annotations

import pytest
import torch

from control import make_policy
from nodes.models.batch_draft import DraftJob, SlotDraftSession, draft_batch
from nodes.models.batch_verify import BatchVerifier, VerifyJob
from nodes.models.head import head_for
from nodes.models.loading import load_pair, resolve_dtype
from nodes.models.slots import SlotCache
from nodes.protocol.acting import stop_rule
from nodes.speculative import speculative_generate
from schemas.rounds import SamplingParams

POLICIES = ["target-only", "fixed:3", "hf-heuristic", "auto", "specdec++"]


@pytest.fixture(scope="module")
def bf16_pair():
    return load_pair(dtype="bfloat16")


class Placement:
    """A global forward hook that records every module call off `device`/`dtype`."""

    def __init__(self, device: str, dtype: torch.dtype):
        self.device, self.dtype = torch.device(device), dtype
        self.wrong: list[str] = []
        self.calls = 0

    def _check(self, where: str, t) -> None:
        if isinstance(t, torch.Tensor):
            if t.device != self.device:
                self.wrong.append(f"{where}: on {t.device}")
            elif t.is_floating_point() and t.dtype != self.dtype:
                self.wrong.append(f"{where}: {t.dtype}")
        elif isinstance(t, (list, tuple)):
            for x in t:
                self._check(where, x)
        elif hasattr(t, "logits"):  # a model output
            self._check(where, t.logits)

    def __call__(self, module, args, out) -> None:
        self.calls += 1
        name = type(module).__name__
        for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if pname in ("inv_freq", "original_inv_freq"):  # rotary frequencies: float32 by design in transformers
                continue
            self._check(f"{name}.{pname}", p)
        self._check(f"{name} input", args)
        self._check(f"{name} output", out)

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_default_dtype_is_float32_on_cpu_and_bfloat16_on_cuda():
    assert resolve_dtype("cpu", None) == "float32"
    assert resolve_dtype("cuda", None) == resolve_dtype("cuda:1", None) == "bfloat16"
    assert resolve_dtype("cuda", "float16") == "float16"
    with pytest.raises(Exception, match="dtype 'half' is not one of bfloat16, float16, float32"):
        resolve_dtype("cpu", "half")


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_policy_runs_its_rounds_on_the_pairs_device_and_dtype(bf16_pair, temperature):
    pair = bf16_pair
    assert pair.dtype == "bfloat16"
    prompt = list(pair.tokenizer.encode("The quick brown fox jumps over the lazy dog, and then",
                                        add_special_tokens=False))
    with Placement(pair.device, torch.bfloat16) as hook:
        for spec in POLICIES:
            r = speculative_generate(pair, prompt, 12, make_policy(spec), SamplingParams(temperature), seed=3)
            assert len(r.token_ids) == 12, spec
    assert hook.calls > 100
    assert not hook.wrong, sorted(set(hook.wrong))[:10]


def test_batched_draft_and_verify_with_the_head_run_on_the_pairs_device_and_dtype(bf16_pair):
    """The edge's and the verifier's batched paths (slot caches), with specdec++'s head reading hidden states."""
    pair = bf16_pair
    prompts = [list(pair.tokenizer.encode(t, add_special_tokens=False)) for t in ("Once upon a time", "In 1905, the")]
    head = head_for(pair)
    with Placement(pair.device, torch.bfloat16) as hook:
        cache = SlotCache(pair.draft, max_slots=4, max_len=256)
        policy = make_policy("specdec++")
        from control import RoundContext
        jobs = []
        for p in prompts:
            stop, hidden = stop_rule(policy, RoundContext(stops=True), head)
            jobs.append(DraftJob(SlotDraftSession(cache, p, pair.vocab_size), 6, 1, stop, hidden))
        results, _ = draft_batch(cache, jobs)
        assert all(r.error is None for r in results)
        verifier = BatchVerifier(pair.target, pair.vocab_size, max_slots=4, max_len=256)
        out, stats = verifier.run([VerifyJob(None, p, r.draft, SamplingParams()) for p, r in zip(prompts, results)])
        assert stats.slot_rows == 2 and all(o.verdict is not None for o in out)
    assert not hook.wrong, sorted(set(hook.wrong))[:10]
