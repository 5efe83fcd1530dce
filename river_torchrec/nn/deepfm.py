"""DeepFM (Guo et al., 2017): an FM and an MLP sharing one embedding table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from river_torchrec.nn.base import CTRModel
from river_torchrec.nn.fm import fm_interaction, fm_interaction_grad
from river_torchrec.nn.mlp import MLP

__all__ = ["DeepFM"]


class DeepFM(CTRModel):
    """``logit = FM(x) + MLP(concat_f v_f e_f)``.

    Parameters
    ----------
    embedding_dim
        Width of each field embedding.
    hidden_units
        Hidden layer widths of the deep part.
    table
        Keyword arguments for the :class:`~river_torchrec.nn.DynamicEmbedding`.

    Examples
    --------
    >>> import torch
    >>> model = DeepFM(embedding_dim=4, hidden_units=(8,))
    >>> model.add_fields(3)
    >>> rows = model.embedding.lookup([("u", "a"), ("i", "x"), ("price", None)], learn=True)
    >>> model(torch.tensor([rows, rows]), torch.tensor([[1.0, 1.0, 0.5]] * 2)).shape
    torch.Size([2])

    """

    supports_manual_grad = True
    numpy_terms = ("linear", "fm", "mlp")

    def __init__(
        self,
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (64, 32),
        table: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        super().__init__(embedding_dim=embedding_dim, table=table)
        self.mlp = MLP(0, hidden_units)

    def _grow_fields(self, old: int, new: int) -> None:
        self.mlp.widen(new * self.embedding_dim)

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        linear, factors = self.rows(ids, values)
        deep = self.mlp(factors.flatten(1)).squeeze(-1)
        return self.bias + linear.sum(dim=1) + fm_interaction(factors) + deep

    def forward_cached(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        _, linear, factors = self._gather(ids, values)
        deep, acts = self.mlp.forward_cached(factors.flatten(1))
        logits = self.bias.detach() + linear.sum(dim=1) + fm_interaction(factors) + deep.squeeze(-1)
        return logits, {"ids": ids, "values": values, "factors": factors, "acts": acts}

    def backward_cached(self, cache: dict, d_logits: torch.Tensor):
        factors = cache["factors"]
        d_flat, grads = self.mlp.backward_cached(cache["acts"], d_logits.unsqueeze(-1), "mlp.")
        d_factors = fm_interaction_grad(factors, d_logits) + d_flat.view_as(factors)
        d_linear = d_logits.unsqueeze(1).expand_as(cache["values"])
        rows, row_grads = self._row_grads(cache["ids"], cache["values"], d_linear, d_factors)
        grads["bias"] = d_logits.sum()
        return grads, rows, row_grads
