"""The models of the quality + speed table, each behind one progressive-validation step.

A learner's ``step(x, y)`` predicts ``P(y = True | x)`` and then learns ``(x, y)``, which
is one event of progressive validation. Specs are plain JSON so the parent process can
hand them to a worker process:

* ``{"kind": "ours", "params": {...}}``: ``CTRClassifier(**params)``;
* ``{"kind": "river-lr" | "river-fm" | "river-ffm"}``: river's model behind :class:`OneHotLog`;
* ``{"kind": "vw", "params": {"args": "..."}}``: a Vowpal Wabbit workspace.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Learner", "build"]

#: Vowpal Wabbit's base options (logistic loss, probabilities out, 2**20 weights).
VW_ARGS = "--loss_function logistic --link logistic -b 20 --quiet"

#: The peers every quality table compares with, as ``(row name, job)``: river's linear,
#: FM and FFM models, Vowpal Wabbit linear and with all pairs, and deep-river's MLP.
PEER_ROWS: list[tuple[str, dict]] = [
    ("river LogisticRegression", {"kind": "river-lr"}),
    ("river FMClassifier", {"kind": "river-fm"}),
    ("river FFMClassifier", {"kind": "river-ffm"}),
    ("Vowpal Wabbit (linear)", {"kind": "vw", "params": {"args": VW_ARGS}}),
    ("Vowpal Wabbit (-q ::)", {"kind": "vw", "params": {"args": VW_ARGS + " -q ::"}}),
    ("deep-river Classifier (MLP)", {"kind": "deep-river"}),
]


class Learner(Protocol):
    def step(self, x: dict, y: bool) -> float: ...


class RiverStep:
    """Any river classifier (a pipeline included): ``predict_proba_one`` then ``learn_one``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def step(self, x: dict, y: bool) -> float:
        p = self.model.predict_proba_one(x).get(True, 0.5)
        self.model.learn_one(x, y)
        return p


class VWStep:
    """Parse the event once, predict (no update), then learn from the same example."""

    def __init__(self, args: str) -> None:
        import vowpalwabbit

        from peers.river_input import VWFormatter

        self.vw = vowpalwabbit.Workspace(args)
        self.fmt = VWFormatter()

    def step(self, x: dict, y: bool) -> float:
        vw = self.vw
        ex = vw.parse(self.fmt.line(x, y))
        p = vw.predict(ex)
        vw.learn(ex)
        vw.finish_example(ex)
        return p


def build(spec: dict, device: str = "cpu", seed: int = 42) -> Learner:
    kind = spec["kind"]
    params = dict(spec.get("params") or {})
    if kind == "ours":
        from river_torchrec import CTRClassifier

        params.setdefault("device", device)
        return RiverStep(CTRClassifier(**params))
    if kind.startswith("river-"):
        from river import facto, linear_model

        from peers.river_input import OneHotLog

        if kind == "river-lr":
            model = linear_model.LogisticRegression(**params)
        elif kind == "river-fm":
            model = facto.FMClassifier(**{"n_factors": 8, "seed": seed, **params})
        elif kind == "river-ffm":
            model = facto.FFMClassifier(**{"n_factors": 8, "seed": seed, **params})
        else:
            raise ValueError(f"unknown river peer {kind!r}")
        return RiverStep(OneHotLog() | model)
    if kind == "vw":
        return VWStep(params.get("args", VW_ARGS))
    raise ValueError(f"unknown model kind {kind!r}")
