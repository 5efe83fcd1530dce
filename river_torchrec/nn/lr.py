"""Logistic regression over the embedding table's first-order column."""

from __future__ import annotations

from typing import Any

import torch

from river_torchrec.nn.base import CTRModel

__all__ = ["LogisticRegression"]


class LogisticRegression(CTRModel):
    """``logit = b + sum_f w[id_f] * v_f``: one weight per (field, value), one per numeric field.

    Parameters
    ----------
    table
        Keyword arguments for the :class:`~river_torchrec.nn.DynamicEmbedding`.

    Examples
    --------
    >>> import torch
    >>> model = LogisticRegression()
    >>> model.add_fields(2)
    >>> rows = model.embedding.lookup([("user", "a"), ("price", None)], learn=True)
    >>> ids, values = torch.tensor([rows]), torch.tensor([[1.0, 2.5]])
    >>> model(ids, values)
    tensor([0.], grad_fn=...)

    """

    uses_linear = True
    supports_manual_grad = True
    numpy_terms = ("linear",)

    def __init__(self, embedding_dim: int = 0, table: dict[str, Any] | None = None, **_: Any) -> None:
        super().__init__(embedding_dim=0, table=table)

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        w = self.embedding(ids)[..., 0]
        return self.bias + (w * values).sum(dim=1)

    def forward_cached(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        w = self.embedding.weight[ids][..., 0].float()
        return self.bias.detach() + (w * values).sum(dim=1), {"ids": ids, "values": values}

    def backward_cached(self, cache: dict, d_logits: torch.Tensor):
        d_linear = d_logits.unsqueeze(1).expand_as(cache["values"])
        rows, grads = self._row_grads(cache["ids"], cache["values"], d_linear, None)
        return {"bias": d_logits.sum()}, rows, grads
