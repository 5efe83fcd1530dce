"""A plain ReLU multilayer perceptron whose input can widen as fields appear."""

from __future__ import annotations

from collections.abc import Sequence

import math
import warnings

import numpy as np
import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """``Linear -> ReLU`` blocks ending in a linear layer of width ``out_features``.

    Parameters
    ----------
    in_features
        Input width (may be 0: the first layer then sees nothing until :meth:`widen`).
    hidden_units
        Width of each hidden layer.
    out_features
        Width of the output layer (0 means the last hidden layer is the output).
    seed
        Seed of the initialisation of input columns added by :meth:`widen`.

    """

    def __init__(
        self, in_features: int, hidden_units: Sequence[int], out_features: int = 1, seed: int = 0
    ) -> None:
        super().__init__()
        self.seed = seed
        widths = [in_features, *hidden_units]
        layers: list[nn.Module] = []
        with warnings.catch_warnings():
            # A first layer with no inputs yet is expected: fields arrive with the stream.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            for a, b in zip(widths[:-1], widths[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            if out_features:
                layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)
        self.out_width = out_features or widths[-1]

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def widen(self, in_features: int) -> None:
        """Add input columns to the first layer, initialised like ``nn.Linear``.

        An absent field feeds zeros, so the new columns leave every output on the old
        inputs unchanged; random (not zero) columns let the new field's embedding
        receive gradient from the first step.
        """
        first = self.layers[0]
        old = first.in_features
        if in_features <= old:
            return
        bound = 1.0 / math.sqrt(in_features)
        gen = torch.Generator().manual_seed(self.seed * 7919 + in_features)
        new_cols = (torch.rand(first.out_features, in_features - old, generator=gen) * 2 - 1) * bound
        weight = torch.cat([first.weight.detach(), new_cols.to(first.weight)], dim=1)
        first.weight = nn.Parameter(weight)
        first.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def _linears(self) -> list[tuple[str, nn.Linear, bool]]:
        """(index, layer, followed by a ReLU) for each linear layer."""
        mods = list(self.layers)
        return [
            (str(i), m, i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU))
            for i, m in enumerate(mods)
            if isinstance(m, nn.Linear)
        ]

    def forward_cached(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and the activations :meth:`backward_cached` needs: each layer's input, then the output."""
        acts = [x]
        for _, layer, relu in self._linears():
            x = torch.addmm(layer.bias, x, layer.weight.T)
            if relu:
                x = x.clamp_min(0)
            acts.append(x)
        return x, acts

    def backward_cached(
        self, acts: list[torch.Tensor], d_out: torch.Tensor, prefix: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gradient of the input and ``{"<prefix>layers.<i>.weight": grad, ...}``."""
        grads: dict[str, torch.Tensor] = {}
        d = d_out
        linears = self._linears()
        for j in range(len(linears) - 1, -1, -1):
            idx, layer, relu = linears[j]
            if relu:
                # acts[j + 1] is this layer's ReLU output: no gradient where it was cut to 0.
                d = d * (acts[j + 1] > 0)
            grads[f"{prefix}layers.{idx}.weight"] = d.T @ acts[j]
            grads[f"{prefix}layers.{idx}.bias"] = d.sum(0)
            d = d @ layer.weight
        return d, grads

    # ------------------------------------------------- one-event NumPy twin

    def numpy_plan(self, prefix: str) -> list[tuple[str, str, bool]]:
        """``(weight name, bias name, followed by a ReLU)`` of each linear layer, first to last."""
        return [(f"{prefix}layers.{i}.weight", f"{prefix}layers.{i}.bias", relu) for i, _, relu in self._linears()]

    @staticmethod
    def numpy_forward(
        plan: list[tuple[str, str, bool]], arrays: dict[str, np.ndarray], x: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """:meth:`forward_cached` for one event as a 1-D float32 array, on NumPy views of the weights."""
        acts = [x]
        for w, b, relu in plan:
            x = arrays[w] @ x + arrays[b]
            if relu:
                np.maximum(x, 0, out=x)
            acts.append(x)
        return x, acts

    @staticmethod
    def numpy_backward(
        plan: list[tuple[str, str, bool]],
        arrays: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        acts: list[np.ndarray],
        d_out: np.ndarray,
    ) -> np.ndarray:
        """:meth:`backward_cached` for one event: writes each layer's gradients into ``grads``
        (preallocated arrays of the parameters' shapes) and returns the input's gradient."""
        d = d_out
        for j in range(len(plan) - 1, -1, -1):
            w, b, relu = plan[j]
            if relu:
                d = d * (acts[j + 1] > 0)
            np.multiply(d[:, None], acts[j], out=grads[w])  # the outer product, without np.outer's checks
            np.copyto(grads[b], d)
            d = d @ arrays[w]
        return d
