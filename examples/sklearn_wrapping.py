"""scikit-learn wrapping: the same models in sklearn pipelines and cross-validation.

    python examples/sklearn_wrapping.py --n 20000

``SKLearnCTRClassifier`` takes DataFrames of string (categorical) and numeric columns,
missing values included, and trains a ``CTRClassifier`` with ``learn_many`` steps over
mini-batches. Anything that takes a scikit-learn classifier takes it: here
``cross_val_score`` with a time-ordered split, and a ``GridSearchCV`` over the model.
"""

from __future__ import annotations

import argparse

import pandas as pd
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit, cross_val_score

from river_torchrec.compat import SKLearnCTRClassifier
from river_torchrec.datasets import SyntheticCTR


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    events = list(SyntheticCTR(n_events=args.n, seed=args.seed))
    X = pd.DataFrame([x for x, _ in events])
    y = [label for _, label in events]

    clf = SKLearnCTRClassifier(model="fm", batch_size=64, epochs=2, seed=args.seed)
    # Train on the past, test on the future: never shuffle a click log across time.
    cv = TimeSeriesSplit(n_splits=3)
    scores = cross_val_score(clf, X, y, cv=cv, scoring="roc_auc")
    print(f"FM, time-ordered 3-fold ROC AUC: {scores.mean():.4f} (+/- {scores.std():.4f})")

    search = GridSearchCV(
        SKLearnCTRClassifier(batch_size=64, seed=args.seed),
        {"model": ["lr", "fm"], "epochs": [1, 2]},
        cv=cv,
        scoring="neg_log_loss",
    )
    search.fit(X, y)
    print(f"best of the grid: {search.best_params_}, LogLoss {-search.best_score_:.4f}")


if __name__ == "__main__":
    main()
