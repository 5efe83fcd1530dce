"""A hand-written PyTorch DeepFM loop on pre-built tensors: the floor for ``learn_many``.

The same model as ``CTRClassifier(model="deepfm")``: one embedding row per (field, value)
(and per numeric field, scaled by the log-scaled value) whose column 0 is the first-order
weight and columns 1..k the factors, a global bias, the FM pair term and a ReLU MLP on the
concatenated factors. Each 1,024-event batch is predicted (no grad) and then learned: a
forward, ``backward`` and an Adam step.

Everything the library does per event is done here once, up front and untimed: the
vocabulary is built in advance (so the table has its final size and never grows), events
are already integer tensors, and no validation, pandas or bookkeeping runs. The embedding
is an ``nn.Embedding(sparse=True)`` updated by ``torch.optim.SparseAdam`` (lazy Adam: only
the rows a batch touches move, as in the library); the dense parameters use
``torch.optim.Adam``. Both at lr 1e-3; ``run_all.py`` gives the library the same updater
(``optimizer="adam", lr=1e-3``) for this comparison.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BareDeepFM", "encode", "run"]


def encode(events: Sequence[tuple[dict, bool]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``ids [N, F]``, ``values [N, F]``, ``y [N]`` and the number of rows (padding row 0 included)."""
    fields: dict = {}
    vocab: dict = {}
    for x, _ in events:
        for key in x:
            fields.setdefault(key, len(fields))
    ids = torch.zeros(len(events), len(fields), dtype=torch.long)
    vals = torch.zeros(len(events), len(fields))
    for i, (x, _) in enumerate(events):
        for key, v in x.items():
            if v is None:
                continue
            numeric = not isinstance(v, (str, bool))
            slot = fields[key]
            ids[i, slot] = vocab.setdefault((key, None if numeric else v), len(vocab) + 1)
            vals[i, slot] = math.copysign(math.log1p(abs(v)), v) if numeric else 1.0
    y = torch.tensor([float(t) for _, t in events])
    return ids, vals, y, len(vocab) + 1


class BareDeepFM(nn.Module):
    def __init__(self, n_rows: int, n_fields: int, dim: int = 8, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_rows, 1 + dim, padding_idx=0, sparse=True)
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 0.01)
            self.embedding.weight[:, 0] = 0.0
            self.embedding.weight[0] = 0.0
        self.bias = nn.Parameter(torch.zeros(()))
        widths = [n_fields * dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        rows = self.embedding(ids)
        linear = (rows[..., 0] * values).sum(dim=1)
        factors = rows[..., 1:] * values.unsqueeze(-1)
        total = factors.sum(dim=1)
        fm = 0.5 * (total.pow(2) - factors.pow(2).sum(dim=1)).sum(dim=1)
        return self.bias + linear + fm + self.mlp(factors.flatten(1)).squeeze(-1)


def run(
    ids: torch.Tensor,
    vals: torch.Tensor,
    y: torch.Tensor,
    n_rows: int,
    batch_size: int = 1024,
    dim: int = 8,
    hidden: Sequence[int] = (64, 32),
    lr: float = 1e-3,
    seed: int = 42,
) -> tuple[float, list[float]]:
    """Progressive validation in batches: seconds taken and the predictions made."""
    torch.manual_seed(seed)
    model = BareDeepFM(n_rows, ids.shape[1], dim, hidden).to(ids.device)
    sparse_opt = torch.optim.SparseAdam(list(model.embedding.parameters()), lr=lr)
    dense_opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("embedding")], lr=lr)
    preds = []
    start = time.perf_counter()
    for lo in range(0, len(y), batch_size):
        i, v, t = ids[lo : lo + batch_size], vals[lo : lo + batch_size], y[lo : lo + batch_size]
        with torch.no_grad():
            preds.append(torch.sigmoid(model(i, v)))
        loss = F.binary_cross_entropy_with_logits(model(i, v), t)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
    if ids.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, torch.cat(preds).double().cpu().tolist()
