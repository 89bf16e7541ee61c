"""The acceptance head (SpecDec++): predicts, from the draft's own state, whether the
target will accept the token just drafted.

A small MLP on the draft model's last hidden state at the drafted position
plus two features of its distribution (log q(x) of the drafted token and the
entropy of q), trained by `specstop train-head` on target-verified drafts of
the bundled pair with the soft label min(1, p(x)/q(x)) — the probability that
speculative sampling keeps x (SpecDec++'s target). It is shipped with the pair
(`nodes/models/bundled/head/`). Drafting computes hidden states only when the
acting policy asks for this signal (Policy.stop_signal == "acceptance").
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from nodes.models.errors import ModelError
from nodes.models.train_pair import BUNDLED_DIR

FEATURES = ("hidden", "log_q", "entropy")


def head_path(root: Path | None = None) -> Path:
    return (root or BUNDLED_DIR / "head") / "head.safetensors"


class AcceptanceHead(nn.Module):
    def __init__(self, hidden: int, width: int = 64):
        super().__init__()
        self.hidden, self.width = hidden, width
        self.net = nn.Sequential(nn.Linear(hidden + 2, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, hidden: torch.Tensor, log_q: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """Logit of P(accept); inputs [..., hidden], [...], [...]."""
        x = torch.cat([hidden, log_q.unsqueeze(-1), entropy.unsqueeze(-1)], dim=-1)
        return self.net(x).squeeze(-1)

    @torch.inference_mode()
    def accept_prob(self, hidden: torch.Tensor, logits: torch.Tensor, token: int) -> float:
        """P(accept) of `token` drafted from `logits` (temperature 1 features) at state `hidden`. The features
        are computed in float32 (a sum over the vocabulary), then fed in the head's own dtype and device."""
        w = self.net[0].weight
        log_q, entropy = q_features(logits.float())
        feats = (t.to(device=w.device, dtype=w.dtype) for t in (hidden, log_q[token], entropy))
        return float(torch.sigmoid(self(*feats)))


def q_features(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q over the vocabulary, entropy of q) at temperature 1."""
    log_q = torch.log_softmax(logits, dim=-1)
    return log_q, -(log_q.exp() * log_q).sum(-1)


def save_head(head: AcceptanceHead, root: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(head_path(root)))
    (root / "head.json").write_text(json.dumps({"hidden": head.hidden, "width": head.width, "features": FEATURES,
                                                **meta}, indent=1) + "\n")


def load_head(root: Path | None = None) -> AcceptanceHead | None:
    """The shipped (or given) head, or None when there is none."""
    path = head_path(root)
    if not path.exists():
        return None
    from safetensors.torch import load_file

    meta = json.loads((path.parent / "head.json").read_text())
    head = AcceptanceHead(int(meta["hidden"]), int(meta["width"]))
    head.load_state_dict(load_file(str(path)))
    return head.eval()


def head_for(pair, root: Path | None = None) -> AcceptanceHead:
    """The shipped (or given) head, checked against the pair's draft; ModelError (one line) if unusable."""
    from nodes.models.loading import model_hash

    path = head_path(root)
    try:
        head = load_head(root)
    except Exception as exc:  # a damaged file: say which
        raise ModelError(f"acceptance head {path} cannot be loaded: {type(exc).__name__}: {str(exc)[:120]}") from None
    if head is None:
        raise ModelError(f"no acceptance head at {path}: train one with `specstop train-head`")
    hidden = getattr(getattr(pair.draft, "config", None), "hidden_size", None)
    if hidden != head.hidden:
        raise ModelError(f"acceptance head {path} was trained for a draft with hidden size {head.hidden}, "
                         f"not this draft's {hidden}")
    trained_for = json.loads((path.parent / "head.json").read_text()).get("draft")
    if trained_for is not None and trained_for != model_hash(pair.draft_name):
        raise ModelError(f"acceptance head {path} was trained for another draft model than '{pair.draft_name}'")
    p = next(pair.draft.parameters())
    return head.to(device=p.device, dtype=p.dtype)  # where and in what the draft's hidden states are


@torch.inference_mode()
def collect(pair, windows: list[list[int]], draft_len: int = 8) -> dict[str, torch.Tensor]:
    """Draft `draft_len` tokens greedily after each window, verify them with the target, and keep per
    drafted position: the draft's hidden state, log q(x), entropy, the soft label min(1, p/q) and
    whether greedy verification accepts x (for evaluation)."""
    hs, lq, ent, soft, greedy = [], [], [], [], []
    v = pair.vocab_size
    for ctx in windows:
        ids = torch.tensor([ctx], dtype=torch.long)
        drafted = []
        for _ in range(draft_len):
            out = pair.draft(input_ids=ids, output_hidden_states=True)
            logits = out.logits[0, -1, :v].float()
            tok = int(torch.argmax(logits))
            log_q, entropy = q_features(logits)
            hs.append(out.hidden_states[-1][0, -1].float())
            lq.append(log_q[tok])
            ent.append(entropy)
            drafted.append(tok)
            ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
        t_logits = pair.target(input_ids=ids).logits[0, len(ctx) - 1: len(ctx) - 1 + draft_len, :v].float()
        p = torch.softmax(t_logits, dim=-1)
        for i, tok in enumerate(drafted):
            q_x = float(lq[-draft_len + i].exp())
            soft.append(min(1.0, float(p[i, tok]) / max(q_x, 1e-12)))
            greedy.append(float(int(torch.argmax(t_logits[i])) == tok))
    return {"hidden": torch.stack(hs), "log_q": torch.stack(lq), "entropy": torch.stack(ent),
            "soft": torch.tensor(soft), "greedy": torch.tensor(greedy)}


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (probability a positive outranks a negative)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if not len(pos) or not len(neg):
        return float("nan")
    order = torch.argsort(torch.cat([pos, neg]))
    ranks = torch.empty_like(order, dtype=torch.float)
    ranks[order] = torch.arange(1, len(order) + 1, dtype=torch.float)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def train_head(pair, out: Path, windows: int = 1500, window_len: int = 160, epochs: int = 40, seed: int = 0,
               log=print) -> dict:
    """Collect target-verified drafts from the corpus, fit the head (BCE on soft labels), evaluate on a
    held-out fifth (Brier score vs the soft labels, AUC vs greedy acceptance), save it."""
    from nodes.models.train_pair import corpus_documents

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    docs = [d.encode("utf-8") for d in corpus_documents()]
    starts = []
    for i in range(windows):
        doc = docs[int(torch.randint(len(docs), (1,), generator=g))]
        lo = int(torch.randint(max(1, len(doc) - window_len), (1,), generator=g))
        n = 16 + int(torch.randint(window_len - 16, (1,), generator=g))
        starts.append(list(doc[lo: lo + n]) or list(doc[:16]))
    log(f"collecting drafts after {len(starts)} windows")
    data = collect(pair, starts)
    n = len(data["soft"])
    perm = torch.randperm(n, generator=g)
    test, train = perm[: n // 5], perm[n // 5:]
    head = AcceptanceHead(data["hidden"].shape[-1])
    opt = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    log(f"training on {len(train)} drafted positions")
    for epoch in range(epochs):
        for batch in torch.split(train[torch.randperm(len(train), generator=g)], 256):
            logit = head(data["hidden"][batch], data["log_q"][batch], data["entropy"][batch])
            loss = loss_fn(logit, data["soft"][batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        pred = torch.sigmoid(head(data["hidden"][test], data["log_q"][test], data["entropy"][test]))
    base = data["soft"][train].mean()
    metrics = {
        "positions": n, "train": len(train), "test": len(test), "epochs": epochs, "seed": seed,
        "brier_vs_soft_label": round(float(((pred - data["soft"][test]) ** 2).mean()), 4),
        "brier_constant_baseline": round(float(((base - data["soft"][test]) ** 2).mean()), 4),
        "auc_vs_greedy_acceptance": round(auc(pred, data["greedy"][test]), 4),
        "auc_of_draft_confidence": round(auc(data["log_q"][test].exp(), data["greedy"][test]), 4),
        "mean_soft_label": round(float(data["soft"].mean()), 4),
        "greedy_acceptance": round(float(data["greedy"].mean()), 4),
        "train_s": round(time.perf_counter() - t0, 1),
    }
    from nodes.models.loading import model_hash

    save_head(head, out, {"metrics": metrics, "window_len": window_len, "windows": windows,
                          "draft": model_hash(pair.draft_name)})
    return metrics
