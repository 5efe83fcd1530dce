"""Wide & Deep (Cheng et al., 2016): a linear model beside an MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from river_torchrec.nn.base import CTRModel
from river_torchrec.nn.mlp import MLP

__all__ = ["WideAndDeep"]


class WideAndDeep(CTRModel):
    """``logit = b + sum_f w_f v_f + MLP(concat_f v_f e_f)``.

    The wide part memorises single values (add crosses with
    :class:`river_torchrec.features.FeatureCrosser` to let it memorise pairs); the deep
    part generalises through the embeddings.

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
    >>> model = WideAndDeep(embedding_dim=4, hidden_units=(8,))
    >>> model.add_fields(2)
    >>> rows = model.embedding.lookup([("u", "a"), ("i", "x")], learn=True)
    >>> model(torch.tensor([rows]), torch.ones(1, 2)).shape
    torch.Size([1])

    """

    supports_manual_grad = True
    numpy_terms = ("linear", "mlp")

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
        return self.bias + linear.sum(dim=1) + self.mlp(factors.flatten(1)).squeeze(-1)

    def forward_cached(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        _, linear, factors = self._gather(ids, values)
        deep, acts = self.mlp.forward_cached(factors.flatten(1))
        logits = self.bias.detach() + linear.sum(dim=1) + deep.squeeze(-1)
        return logits, {"ids": ids, "values": values, "factors": factors, "acts": acts}

    def backward_cached(self, cache: dict, d_logits: torch.Tensor):
        d_flat, grads = self.mlp.backward_cached(cache["acts"], d_logits.unsqueeze(-1), "mlp.")
        d_linear = d_logits.unsqueeze(1).expand_as(cache["values"])
        rows, row_grads = self._row_grads(
            cache["ids"], cache["values"], d_linear, d_flat.view_as(cache["factors"])
        )
        grads["bias"] = d_logits.sum()
        return grads, rows, row_grads
