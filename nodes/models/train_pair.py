"""Train the bundled byte-level target/draft pair (`specstop train-pair`).

Text comes from `pydoc_data.topics`, present on every CPython install. Each
topic ends with <eos> so the models learn to stop; since there are only ~80
topics, a quarter of the windows are placed to end exactly at an <eos>. Windows are as long as the
contexts we serve (default 1024 bytes): a pair trained on short windows loses
its acceptance past that length. Weights are stored in float16 to keep the
package small; they are loaded as float32.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nodes.models.byte_tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, save_tokenizer

BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class ArchSpec:
    hidden: int
    layers: int
    heads: int
    intermediate: int


TARGET_ARCH = ArchSpec(hidden=256, layers=4, heads=4, intermediate=768)
DRAFT_ARCH = ArchSpec(hidden=96, layers=2, heads=2, intermediate=256)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 700
    draft_steps: int = 1200
    batch: int = 4
    seq_len: int = 1024
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2
    end_fraction: float = 0.25  # windows that end exactly at a topic's <eos>: there are only ~80 of them


def corpus_documents() -> list[str]:
    """The training text: every pydoc topic, in a stable order."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def encode_corpus(docs: list[str]):
    import numpy as np

    out: list[int] = []
    for doc in docs:
        out.extend(doc.encode("utf-8"))
        out.append(EOS_ID)
    return np.asarray(out, dtype=np.int64)


def make_config(arch: ArchSpec, max_positions: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.heads,
        intermediate_size=arch.intermediate,
        max_position_embeddings=max_positions,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=None,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )


def train_model(arch: ArchSpec, data, steps: int, cfg: TrainConfig, log=print):
    """Next-byte training on random windows; returns the model (float32)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = LlamaForCausalLM(make_config(arch, max_positions=4 * cfg.seq_len))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    tokens = torch.from_numpy(data)
    ends = torch.nonzero(tokens == EOS_ID).flatten()
    ends = ends[ends >= cfg.seq_len]
    warmup = max(1, steps // 20)
    t0 = time.perf_counter()
    for step in range(steps):
        lr = cfg.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(tokens) - cfg.seq_len - 1, (cfg.batch,), generator=gen)
        at_end = torch.rand(cfg.batch, generator=gen) < cfg.end_fraction
        pick = ends[torch.randint(0, len(ends), (cfg.batch,), generator=gen)] - cfg.seq_len
        starts = torch.where(at_end, pick, starts)
        batch = torch.stack([tokens[s : s + cfg.seq_len + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            log(json.dumps({"event": "train_step", "step": step, "loss": round(loss.item(), 4),
                            "lr": round(lr, 6), "elapsed_s": round(time.perf_counter() - t0, 1)}))
    model.eval()
    return model


def save_model(model, path: Path) -> None:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(str(path))
    model.to(torch.float32)
    save_tokenizer(path)


def train_pair(out_dir: Path = BUNDLED_DIR, cfg: TrainConfig = TrainConfig(), log=print) -> dict:
    import torch

    torch.set_num_threads(cfg.threads)
    data = encode_corpus(corpus_documents())
    summary = {"config": asdict(cfg), "corpus_tokens": int(len(data))}
    for name, arch, steps in (("target", TARGET_ARCH, cfg.steps), ("draft", DRAFT_ARCH, cfg.draft_steps)):
        model = train_model(arch, data, steps, cfg, log=log)
        save_model(model, out_dir / name)
        summary[name] = {"params": sum(p.numel() for p in model.parameters()), "arch": asdict(arch)}
    (out_dir / "TRAINING.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
