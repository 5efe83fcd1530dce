"""Warm start: a few epochs of mini-batches over a historical log, then learn online.

    python examples/warm_start.py --n 20000 --epochs 3

The first half of a synthetic stream plays the historical log: the model takes
``learn_many`` steps over shuffled mini-batches of it, like an offline training job. It
then serves the second half online, predicting each event before learning it with
``learn_one``. A model that starts cold on the second half is the baseline.
"""

from __future__ import annotations

import argparse

import pandas as pd
from river import metrics

from river_torchrec import CTRClassifier
from river_torchrec.datasets import SyntheticCTR


def online_logloss(model: CTRClassifier, events: list) -> float:
    metric = metrics.LogLoss()
    for x, y in events:
        metric.update(y, model.predict_proba_one(x))
        model.learn_one(x, y)
    return metric.get()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4_000, help="events: half history, half online")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    events = list(SyntheticCTR(n_events=args.n, seed=args.seed))
    history, live = events[: args.n // 2], events[args.n // 2 :]

    # A DataFrame of the log: missing values would be None/NaN, which learn_many skips.
    X = pd.DataFrame([x for x, _ in history])
    y = pd.Series([label for _, label in history])

    warm = CTRClassifier(model="deepfm", seed=args.seed)
    for epoch in range(args.epochs):
        order = X.sample(frac=1.0, random_state=args.seed + epoch).index
        for start in range(0, len(order), args.batch_size):
            rows = order[start : start + args.batch_size]
            warm.learn_many(X.loc[rows], y.loc[rows])
        print(f"epoch {epoch + 1}: {len(order)} historical events")

    cold = CTRClassifier(model="deepfm", seed=args.seed)
    print(f"online, on the last {len(live)} events")
    print(f"  cold start: LogLoss {online_logloss(cold, live):.4f}")
    print(f"  warm start: LogLoss {online_logloss(warm, live):.4f}")


if __name__ == "__main__":
    main()
