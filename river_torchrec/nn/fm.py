"""Factorization machine (Rendle, 2010)."""

from __future__ import annotations

from typing import Any

import torch

from river_torchrec.nn.base import CTRModel

__all__ = ["FM", "fm_interaction", "fm_interaction_grad"]


def fm_interaction_grad(factors: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`fm_interaction` w.r.t. the factors: ``d * (sum_g e_g - e_f)``."""
    return d_out.view(-1, 1, 1) * (factors.sum(dim=1, keepdim=True) - factors)


def fm_interaction(factors: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise dot products of ``[B, F, k]`` factors in O(F k): ``[B]``."""
    square_of_sum = factors.sum(dim=1).pow(2)
    sum_of_square = factors.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class FM(CTRModel):
    """``logit = b + sum_f w_f v_f + sum_{f<g} <e_f, e_g> v_f v_g``.

    Parameters
    ----------
    embedding_dim
        Number of latent factors per row.
    table
        Keyword arguments for the :class:`~river_torchrec.nn.DynamicEmbedding`.

    Examples
    --------
    >>> import torch
    >>> model = FM(embedding_dim=4)
    >>> model.add_fields(2)
    >>> rows = model.embedding.lookup([("user", "a"), ("item", "x")], learn=True)
    >>> model(torch.tensor([rows]), torch.ones(1, 2)).shape
    torch.Size([1])

    """

    supports_manual_grad = True
    numpy_terms = ("linear", "fm")

    def __init__(self, embedding_dim: int = 8, table: dict[str, Any] | None = None, **_: Any) -> None:
        super().__init__(embedding_dim=embedding_dim, table=table)

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        linear, factors = self.rows(ids, values)
        return self.bias + linear.sum(dim=1) + fm_interaction(factors)

    def forward_cached(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        _, linear, factors = self._gather(ids, values)
        logits = self.bias.detach() + linear.sum(dim=1) + fm_interaction(factors)
        return logits, {"ids": ids, "values": values, "factors": factors}

    def backward_cached(self, cache: dict, d_logits: torch.Tensor):
        d_linear = d_logits.unsqueeze(1).expand_as(cache["values"])
        d_factors = fm_interaction_grad(cache["factors"], d_logits)
        rows, grads = self._row_grads(cache["ids"], cache["values"], d_linear, d_factors)
        return {"bias": d_logits.sum()}, rows, grads
