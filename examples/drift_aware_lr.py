"""Drift-aware learning rates: boost the step size when the loss says the world changed.

    python examples/drift_aware_lr.py --n 30000

``DriftAwareLR`` feeds each event's progressive loss to a river drift detector (ADWIN by
default). When it fires, the learning rate jumps to ``boost`` times its base value and
decays back with a half-life, and Adam's moments restart, so the model unlearns the old
concept faster. The stream's click model is redrawn half-way (``drift="abrupt"``), on a
stream where that change is large next to the noise (few users and items, a 30% click
rate, strong user x item effects: the stream ``benchmarks/bench_drift.py`` tuned the
defaults on); the script compares a constant rate with the drift-aware one and lists the
alarms.
"""

from __future__ import annotations

import argparse

from river import drift, metrics

from river_torchrec import CTRClassifier
from river_torchrec.datasets import SyntheticCTR
from river_torchrec.optim.schedulers import DriftAwareLR


def run(model: CTRClassifier, dataset, after: int) -> tuple[float, float]:
    """Progressive LogLoss over the whole stream and over the events after ``after``."""
    overall, post = metrics.LogLoss(), metrics.LogLoss()
    for i, (x, y) in enumerate(dataset):
        p = model.predict_proba_one(x)
        overall.update(y, p)
        if i >= after:
            post.update(y, p)
        model.learn_one(x, y)
    return overall.get(), post.get()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    dataset = SyntheticCTR(
        n_events=args.n, drift="abrupt", seed=args.seed,
        n_users=200, n_items=50, positive_rate=0.3, interaction_scale=2.0,
    )
    (drift_at,) = dataset.drift_points
    print(f"{args.n} events, the click model changes at event {drift_at}")

    scheduler = DriftAwareLR(
        # ADWIN's default sensitivity, written out: a larger delta fires sooner after a
        # change, and also on noise.
        detector=drift.ADWIN(delta=0.002),
        boost=8.0,  # the rate right after an alarm, in multiples of the base rate
        half_life=2_000,  # events over which the excess boost halves
    )
    models = {
        "constant rate": CTRClassifier(model="fm", seed=args.seed),
        "drift-aware rate": CTRClassifier(model="fm", scheduler=scheduler, seed=args.seed),
    }
    for name, model in models.items():
        overall, post = run(model, dataset, drift_at)
        print(f"{name:>17}: LogLoss {overall:.4f} overall, {post:.4f} after the drift")
    print(f"drift alarms at events: {scheduler.drifts_ or 'none'}")


if __name__ == "__main__":
    main()
