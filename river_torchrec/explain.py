"""Per-field contributions to a CTR model's logit: closed forms for LR and FM, integrated gradients otherwise."""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from river.utils.pretty import print_table
from torch import nn

from river_torchrec.nn import FM, CTRModel, LogisticRegression

__all__ = ["Explanation", "explain_event", "field_contributions", "integrated_gradients"]


@dataclass(frozen=True)
class Explanation:
    """How each field of one event moved the logit away from the baseline.

    ``baseline + sum(contributions.values()) == logit`` (to 1e-5, float32 forward).

    Attributes
    ----------
    contributions
        Each field of the event (in the event's order) and its contribution to the logit.
        A missing field (``None``) and a field the model has never learned contribute 0.
    values
        The event's raw feature values.
    baseline
        The logit with every field absent: the bias for LR and FM.
    logit
        The model's logit for the event (what the prediction is the sigmoid of).
    method
        ``"exact"`` (LR and FM: closed forms) or ``"integrated-gradients"`` (any other model).

    """

    contributions: dict[Hashable, float]
    values: dict[Hashable, Any] = field(repr=False)
    baseline: float
    logit: float
    method: str

    @property
    def probability(self) -> float:
        """The click probability, ``sigmoid(logit)``."""
        z = self.logit
        # Written both ways so that exp never overflows for large |logit|.
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_table(self, decimals: int = 5) -> str:
        """A table of field, value and contribution, largest ``|contribution|`` first,
        followed by the baseline, the logit and the probability."""

        def fmt(v: float) -> str:
            return "{: ,.{prec}f}".format(v, prec=decimals)

        def show(v: Any) -> str:
            if isinstance(v, float):
                return fmt(v)
            return repr(v) if isinstance(v, str) else str(v)

        names = list(self.contributions)
        order = sorted(range(len(names)), key=lambda i: -abs(self.contributions[names[i]]))
        base = "Bias" if self.method == "exact" else "Baseline (no field)"
        rows = [(str(names[i]), show(self.values.get(names[i])), fmt(self.contributions[names[i]])) for i in order]
        rows += [(base, "", fmt(self.baseline)), ("Logit", "", fmt(self.logit)), ("Probability", "", fmt(self.probability))]
        return print_table(
            headers=["Field", "Value", "Contribution"],
            columns=[[r[i] for r in rows] for i in range(3)],
        )


def _forward_is(model: CTRModel, cls: type[CTRModel]) -> bool:
    # A subclass that overrides forward() is a different function: it goes through IG.
    return isinstance(model, cls) and type(model).forward is cls.forward


def _rows(model: CTRModel, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The scaled rows ``v_f * e_f`` of one event, ``[F, width]`` float64 on the CPU."""
    weight = model.embedding.weight
    rows = weight[ids.to(weight.device)].to("cpu", torch.float64)
    return rows * values.to("cpu", torch.float64).unsqueeze(-1)


def _exact(model: CTRModel, ids: torch.Tensor, values: torch.Tensor) -> np.ndarray:
    rows = _rows(model, ids, values)
    contributions = rows[:, 0].clone()
    if _forward_is(model, FM):
        # <e_f, e_g> v_f v_g is split evenly between f and g:
        # half of sum_{g != f} <x_f, x_g> = (<x_f, sum_g x_g> - |x_f|^2) / 2.
        factors = rows[:, 1:]
        contributions += 0.5 * (factors @ factors.sum(0) - (factors * factors).sum(1))
    return contributions.numpy()


class _QuadratureRows(nn.Module):
    """Stands in for the embedding table of a model copy: every lookup returns ``current``,
    the field rows at the quadrature points being evaluated."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.current: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.current is None or tuple(ids.shape) != tuple(self.current.shape[:-1]):
            raise TypeError(
                "integrated gradients need the model to gather all its field rows with a single "
                "self.embedding(ids) call on the ids it was given, as CTRModel.rows does"
            )
        return self.current


def integrated_gradients(
    model: CTRModel,
    ids: torch.Tensor,
    values: torch.Tensor,
    *,
    n_points: int = 8,
    tol: float = 1e-9,
    max_depth: int = 24,
    max_batch: int = 4096,
) -> tuple[np.ndarray, float]:
    """Integrated gradients (Sundararajan et al., 2017) of one event over its field rows.

    The input of field ``f`` is its embedding row (first-order column included) scaled by
    its value; the baseline is every row at zero, i.e. every field absent, so
    ``sum(attributions) = logit(event) - logit(no field)`` (completeness).

    The path integral is computed by adaptive Gauss-Legendre quadrature in float64 on a
    copy of the dense layers (the model itself is never called, so nothing in it changes).
    Along the straight path the FM and cross terms are polynomials, integrated exactly by
    ``n_points`` nodes, while a ReLU puts a kink wherever a hidden unit switches, which no
    fixed rule integrates exactly (64 Gauss-Legendre nodes leave completeness errors up to
    2e-4 on a Wide&Deep trained on 1,000 events). Each
    interval therefore checks its own completeness, ``sum_f IG_f`` against the exact
    ``F(b) - F(a)``, and is bisected while that gap exceeds ``tol * (b - a)``; an interval
    holding a kink has a gap proportional to its width, so it stops at width
    ``2 ** -max_depth``, where that gap is negligible (the whole gap is then below 1e-8 on
    the five built-in models, at 10-80 ms per event on one CPU thread).

    Parameters
    ----------
    model
        A CTR model that gathers its rows with one ``self.embedding(ids)`` call.
    ids, values
        One event: ``[F]`` row ids and values.
    n_points
        Gauss-Legendre nodes per interval.
    tol
        Accepted completeness gap per unit of path length.
    max_depth
        Most bisections of an interval.
    max_batch
        Most path points evaluated in one forward/backward pass.

    Returns
    -------
    The ``[F]`` attributions and the baseline logit.

    Examples
    --------
    >>> import torch
    >>> from river_torchrec.nn import DeepFM
    >>> model = DeepFM(embedding_dim=4, hidden_units=(8,))
    >>> model.add_fields(2)
    >>> ids = torch.tensor(model.embedding.lookup([("u", "a"), ("price", None)], learn=True))
    >>> values = torch.tensor([1.0, 3.0])
    >>> ig, baseline = integrated_gradients(model, ids, values)
    >>> with torch.no_grad():
    ...     logit = model(ids[None], values[None]).item()
    >>> bool(abs(baseline + ig.sum() - logit) < 1e-6)  # completeness
    True

    """
    rows = _rows(model, ids, values)
    stub = _QuadratureRows(model.embedding.dim)
    # The memo swaps the (possibly huge) embedding table for the stub, so only the dense
    # layers are copied and converted to float64.
    twin = copy.deepcopy(model, {id(model.embedding): stub}).to("cpu", torch.float64)
    twin.requires_grad_(False)
    n_fields = rows.shape[0]
    nodes, weights = np.polynomial.legendre.leggauss(n_points)
    # Each interval is evaluated at its two ends (for the exact F(b) - F(a)) and its nodes.
    unit = torch.tensor(np.concatenate([[-1.0, 1.0], nodes]), dtype=torch.float64)
    unit_w = torch.tensor(np.concatenate([[0.0, 0.0], weights]), dtype=torch.float64)

    def evaluate(alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and ``d logit / d alpha`` split by field, at path points ``alphas``."""
        outs, grads = [], []
        for chunk in alphas.split(max_batch):
            leaf = (chunk[:, None, None] * rows).requires_grad_()
            stub.current = leaf
            try:
                out = twin(torch.zeros(leaf.shape[:2], dtype=torch.long), torch.ones(leaf.shape[:2], dtype=torch.float64))
                (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
            finally:
                stub.current = None
            outs.append(out.detach())
            grads.append(torch.zeros_like(leaf) if grad is None else grad)
        return torch.cat(outs), (torch.cat(grads) * rows).sum(-1)

    if n_fields == 0:
        (baseline,), _ = evaluate(torch.zeros(1, dtype=torch.float64))
        return np.zeros(0), float(baseline)

    total = torch.zeros(n_fields, dtype=torch.float64)
    baseline = None
    intervals = [(0.0, 1.0, 0)]
    while intervals:
        a = torch.tensor([i[0] for i in intervals], dtype=torch.float64)[:, None]
        b = torch.tensor([i[1] for i in intervals], dtype=torch.float64)[:, None]
        half = (b - a) / 2
        logits, dfield = evaluate(((a + b) / 2 + half * unit).flatten())
        logits = logits.view(len(intervals), -1)
        dfield = dfield.view(len(intervals), len(unit), n_fields)
        parts = (dfield * (half * unit_w)[..., None]).sum(1)  # [intervals, F]
        gaps = (parts.sum(1) - (logits[:, 1] - logits[:, 0])).abs()
        if baseline is None:
            baseline = float(logits[0, 0])
        todo = []
        for (lo, hi, depth), part, gap in zip(intervals, parts, gaps.tolist()):
            if gap <= tol * (hi - lo) or depth >= max_depth:
                total += part
            else:
                mid = (lo + hi) / 2
                todo += [(lo, mid, depth + 1), (mid, hi, depth + 1)]
        intervals = todo
    return total.numpy(), baseline


def field_contributions(model: CTRModel, ids: torch.Tensor, values: torch.Tensor) -> tuple[np.ndarray, float, str]:
    """Contributions ``[F]`` of one event's fields, the baseline logit and the method used.

    LR and FM (unless a subclass overrides ``forward``) get closed forms: ``w_f v_f``, plus
    for FM half of each pairwise term ``<e_f, e_g> v_f v_g`` the field takes part in, so the
    contributions and the bias add up to the logit. That split is exactly what integrated
    gradients give on an FM (along the path a pair term is ``alpha^2 <x_f, x_g>``, and each
    side integrates to half of it). Other models get :func:`integrated_gradients`.
    """
    if _forward_is(model, LogisticRegression) or _forward_is(model, FM):
        return _exact(model, ids, values), float(model.bias.detach()), "exact"
    contributions, baseline = integrated_gradients(model, ids, values)
    return contributions, baseline, "integrated-gradients"


def explain_event(
    model: CTRModel, slots: dict[Hashable, int], x: dict, ids: torch.Tensor, values: torch.Tensor
) -> Explanation:
    """The :class:`Explanation` of ``model``'s logit for the event ``x``.

    Parameters
    ----------
    model
        The CTR model; it is only read.
    slots
        Field -> slot of the estimator's :class:`~river_torchrec.encoding.FieldEncoder`.
    x
        The event, as given by the user.
    ids, values
        ``[1, F]`` tensors of ``x`` as the estimator encodes it for prediction.

    """
    with torch.inference_mode():
        logit = float(model(ids, values)[0])
    exact = _forward_is(model, LogisticRegression) or _forward_is(model, FM)
    if model.n_fields:
        per_slot, baseline, method = field_contributions(model, ids[0], values[0])
    else:
        # Nothing learned yet: every field is unknown and the logit is the baseline.
        per_slot, baseline = np.zeros(0), logit
        method = "exact" if exact else "integrated-gradients"
    contributions = {}
    for f in x:
        slot = slots.get(f)
        contributions[f] = float(per_slot[slot]) if slot is not None and slot < len(per_slot) else 0.0
    return Explanation(contributions=contributions, values=dict(x), baseline=baseline, logit=logit, method=method)
