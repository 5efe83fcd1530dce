"""DCN-v2 (Wang et al., 2021): explicit feature crosses, then an MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from river_torchrec.nn.base import CTRModel, pad_parameter
from river_torchrec.nn.mlp import MLP

__all__ = ["DCNv2", "CrossLayer"]


class CrossLayer(nn.Module):
    """``x_{l+1} = x_0 * (W x_l + b) + x_l`` with a full-rank ``W`` (DCN-v2, eq. 1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width, width))
        self.bias = nn.Parameter(torch.zeros(width))

    def widen(self, width: int) -> None:
        # Zero rows and columns make the new coordinates pass straight through
        # (x_{l+1} = x_l there) and leave the old coordinates' output unchanged.
        pad_parameter(self, "weight", (width, width))
        pad_parameter(self, "bias", (width,))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * (x @ self.weight.T + self.bias) + x


class DCNv2(CTRModel):
    """Stacked DCN-v2: ``logit = b + sum_f w_f v_f + MLP(Cross^L(concat_f v_f e_f))``.

    Cross weights start at zero, so the cross network starts as the identity and learns
    the feature crosses that help; a first-order term is kept, as in Wide & Deep.

    Parameters
    ----------
    embedding_dim
        Width of each field embedding.
    hidden_units
        Hidden layer widths of the deep part.
    n_cross_layers
        Number of cross layers.
    table
        Keyword arguments for the :class:`~river_torchrec.nn.DynamicEmbedding`.

    Examples
    --------
    >>> import torch
    >>> model = DCNv2(embedding_dim=4, hidden_units=(8,), n_cross_layers=2)
    >>> model.add_fields(2)
    >>> rows = model.embedding.lookup([("u", "a"), ("i", "x")], learn=True)
    >>> model(torch.tensor([rows]), torch.ones(1, 2)).shape
    torch.Size([1])

    """

    supports_manual_grad = True

    def __init__(
        self,
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (64, 32),
        n_cross_layers: int = 2,
        table: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        super().__init__(embedding_dim=embedding_dim, table=table)
        self.cross = nn.ModuleList(CrossLayer(0) for _ in range(n_cross_layers))
        self.mlp = MLP(0, hidden_units)

    def _grow_fields(self, old: int, new: int) -> None:
        width = new * self.embedding_dim
        for layer in self.cross:
            layer.widen(width)
        self.mlp.widen(width)

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        linear, factors = self.rows(ids, values)
        x0 = x = factors.flatten(1)
        for layer in self.cross:
            x = layer(x0, x)
        return self.bias + linear.sum(dim=1) + self.mlp(x).squeeze(-1)

    def forward_cached(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        _, linear, factors = self._gather(ids, values)
        x0 = x = factors.flatten(1)
        xs, us = [], []
        for layer in self.cross:
            u = torch.addmm(layer.bias, x, layer.weight.T)
            xs.append(x)
            us.append(u)
            x = x0 * u + x
        deep, acts = self.mlp.forward_cached(x)
        logits = self.bias.detach() + linear.sum(dim=1) + deep.squeeze(-1)
        cache = {"ids": ids, "values": values, "factors": factors, "acts": acts, "xs": xs, "us": us}
        return logits, cache

    def backward_cached(self, cache: dict, d_logits: torch.Tensor):
        d_x, grads = self.mlp.backward_cached(cache["acts"], d_logits.unsqueeze(-1), "mlp.")
        x0 = cache["factors"].flatten(1)
        d_x0 = torch.zeros_like(x0)
        for i in range(len(self.cross) - 1, -1, -1):
            layer, x, u = self.cross[i], cache["xs"][i], cache["us"][i]
            # x_{l+1} = x0 * u + x_l with u = W x_l + b.
            d_u = d_x * x0
            d_x0 = d_x0 + d_x * u
            grads[f"cross.{i}.weight"] = d_u.T @ x
            grads[f"cross.{i}.bias"] = d_u.sum(0)
            d_x = d_u @ layer.weight + d_x
        d_x0 = d_x0 + d_x
        d_linear = d_logits.unsqueeze(1).expand_as(cache["values"])
        rows, row_grads = self._row_grads(
            cache["ids"], cache["values"], d_linear, d_x0.view_as(cache["factors"])
        )
        grads["bias"] = d_logits.sum()
        return grads, rows, row_grads
