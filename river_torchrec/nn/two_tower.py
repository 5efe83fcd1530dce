"""Two-tower retrieval model: a user vector and an item vector, scored by their dot product."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from river_torchrec.nn.base import CTRModel
from river_torchrec.nn.mlp import MLP

__all__ = ["TwoTower"]


class _Tower(nn.Module):
    """``v + MLP(v)``: a residual MLP, so that a tower starts close to the identity (plain MF)."""

    def __init__(self, dim: int, hidden_units: Sequence[int], seed: int) -> None:
        super().__init__()
        self.mlp = MLP(dim, hidden_units, out_features=dim, seed=seed)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v + self.mlp(v)


class TwoTower(CTRModel):
    """``logit = b + sum_f w_f v_f + <tower_u(sum_{f in user} v_f e_f), tower_i(sum_{f in item} v_f e_f)>``.

    Each field is on the user side (user id, user features, context) or on the item side
    (item id, item features); :meth:`set_item_fields` says which slots are the item's, every
    other slot is the user's. A side's vector is the sum of its fields' value-scaled
    embeddings, optionally passed through a residual MLP tower; the first-order weights
    (column 0 of each row) are the user, item and feature biases. With no hidden units the
    model is biased matrix factorisation with side features (as in LightFM).

    Because the score splits into a user part and an item part, ranking a catalogue is one
    matrix-vector product over cached item vectors (:meth:`split`).

    Parameters
    ----------
    embedding_dim
        Width of the user and item vectors.
    hidden_units
        Hidden layers of each tower's residual MLP; ``()`` for no MLP.
    table
        Keyword arguments for the :class:`~river_torchrec.nn.DynamicEmbedding`.
    init_std
        Standard deviation of new rows: dot products of rows drawn at the table's usual
        0.01 are so small that the factors take thousands of events to break symmetry.

    Examples
    --------
    >>> import torch
    >>> model = TwoTower(embedding_dim=4)
    >>> model.add_fields(2)
    >>> model.set_item_fields([1])
    >>> rows = model.embedding.lookup([("user", "a"), ("item", "x")], learn=True)
    >>> ids, vals = torch.tensor([rows]), torch.ones(1, 2)
    >>> u, u_bias, v, v_bias = model.split(ids, vals)
    >>> bool(torch.allclose(model(ids, vals), model.bias + u_bias + v_bias + (u * v).sum(1)))
    True

    """

    def __init__(
        self,
        embedding_dim: int = 32,
        hidden_units: Sequence[int] = (),
        table: dict[str, Any] | None = None,
        init_std: float = 0.1,
        **_: Any,
    ) -> None:
        table = {**(table or {}), "init_std": init_std}
        super().__init__(embedding_dim=embedding_dim, table=table)
        self.item_fields: list[int] = []
        #: slot -> weight of that field's value (1 unless set): how much a side feature
        #: counts next to the ids in its tower's sum.
        self.field_weights: dict[int, float] = {}
        seed = int(table.get("seed", 0))
        self.user_tower = _Tower(embedding_dim, hidden_units, seed) if hidden_units else None
        self.item_tower = _Tower(embedding_dim, hidden_units, seed + 1) if hidden_units else None

    @property
    def supports_manual_grad(self) -> bool:  # type: ignore[override]
        # Hand-written gradients for the linear towers; MLP towers take autograd.
        return self.item_tower is None

    @property
    def has_towers(self) -> bool:
        """Whether dense tower layers exist (then every step moves every item vector)."""
        return self.item_tower is not None

    def set_item_fields(self, slots: Sequence[int]) -> None:
        """Declare the item-side slots (all others are user-side)."""
        self.item_fields = sorted(set(int(s) for s in slots))

    def set_field_weights(self, weights: dict[int, float]) -> None:
        """Weight the values of these slots (a field's embedding counts ``weight`` times)."""
        self.field_weights = {int(s): float(w) for s, w in weights.items() if float(w) != 1.0}

    def _weighted(self, values: torch.Tensor) -> torch.Tensor:
        if not self.field_weights:
            return values
        w = torch.ones(values.shape[1], dtype=values.dtype, device=values.device)
        for slot, weight in self.field_weights.items():
            if slot < len(w):
                w[slot] = weight
        return values * w

    def _item_mask(self, n_fields: int, device: torch.device) -> torch.Tensor:
        mask = torch.zeros(n_fields, dtype=torch.bool, device=device)
        slots = [s for s in self.item_fields if s < n_fields]
        if slots:
            mask[slots] = True
        return mask

    def split(
        self, ids: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """User vectors ``[B, k]``, user-side biases ``[B]``, item vectors ``[B, k]``, item-side biases ``[B]``."""
        linear, factors = self.rows(ids, self._weighted(values))
        mask = self._item_mask(ids.shape[1], ids.device)
        m = mask.to(factors.dtype)
        u = (factors * (1 - m)[:, None]).sum(1)
        v = (factors * m[:, None]).sum(1)
        if self.user_tower is not None:
            u, v = self.user_tower(u), self.item_tower(v)
        return u, (linear * (1 - m)).sum(1), v, (linear * m).sum(1)

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        u, u_bias, v, v_bias = self.split(ids, values)
        return self.bias + u_bias + v_bias + (u * v).sum(1)

    def forward_cached(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        values = self._weighted(values)
        _, linear, factors = self._gather(ids, values)
        m = self._item_mask(ids.shape[1], ids.device).to(factors.dtype)
        u = (factors * (1 - m)[:, None]).sum(1)
        v = (factors * m[:, None]).sum(1)
        logits = self.bias.detach() + linear.sum(1) + (u * v).sum(1)
        return logits, {"ids": ids, "values": values, "u": u, "v": v, "m": m}

    def backward_cached(self, cache: dict, d_logits: torch.Tensor):
        values, m = cache["values"], cache["m"]
        d_linear = d_logits.unsqueeze(1).expand_as(values)
        # d logit / d factor_f is v for a user-side field, u for an item-side one.
        d_u = d_logits[:, None] * cache["v"]
        d_v = d_logits[:, None] * cache["u"]
        d_factors = d_u[:, None, :] * (1 - m)[None, :, None] + d_v[:, None, :] * m[None, :, None]
        rows, grads = self._row_grads(cache["ids"], values, d_linear, d_factors)
        return {"bias": d_logits.sum()}, rows, grads
