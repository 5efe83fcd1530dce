"""Online CTR on a Criteo-format click log: predict each impression, then learn its click.

    python examples/online_ctr_criteo.py --data path/to/train.txt --n 100000

The file is Kaggle's tab-separated ``train.txt`` / ``dac_sample.txt`` (plain or gzip) or a
CSV export with a ``label,I1..I13,C1..C26`` header. Without ``--data``, a tiny *made-up*
file in the same format is written to a temporary folder, so the script runs anywhere
(the real data may not be redistributed, and nothing is downloaded).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import random
import tempfile

from river import compose, metrics
from sklearn.metrics import roc_auc_score

from river_torchrec import CTRClassifier
from river_torchrec.datasets import Criteo
from river_torchrec.features import LogBucketizer


def write_fake_criteo(path: pathlib.Path, n_rows: int, seed: int = 0) -> None:
    """Random rows in Kaggle's layout; the click depends on C1 and I1, so there is signal."""
    rng = random.Random(seed)
    ads = [f"{rng.getrandbits(32):08x}" for _ in range(50)]
    appeal = {ad: rng.gauss(0, 1.2) for ad in ads}
    lines = []
    for _ in range(n_rows):
        ad = rng.choice(ads)
        count = int(rng.expovariate(0.1))
        p = 1 / (1 + math.exp(-(appeal[ad] - 1.3 + 0.02 * min(count, 50))))
        ints = [str(count)] + [str(int(rng.expovariate(0.05))) if rng.random() > 0.2 else "" for _ in range(12)]
        cats = [ad] + [f"{rng.getrandbits(8):08x}" if rng.random() > 0.1 else "" for _ in range(25)]
        lines.append("\t".join([str(int(rng.random() < p)), *ints, *cats]))
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, help="Criteo file (default: a made-up sample)")
    parser.add_argument("--n", type=int, default=2_000, help="events to stream")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if path is None:
            path = pathlib.Path(tmp) / "made_up_criteo.txt"
            write_fake_criteo(path, args.n, args.seed)
            print(f"no --data: streaming {args.n} made-up rows from {path}")
        dataset = Criteo(path)

        # Integer counts are heavy-tailed: log-squared buckets (the winning Criteo recipe)
        # turn them into categories that get their own embedding rows.
        model = compose.Pipeline(
            LogBucketizer(fields=[f"I{i}" for i in range(1, 14)]),
            CTRClassifier(model="deepfm", embedding_dim=8, seed=args.seed),
        )

        logloss = metrics.LogLoss()
        ys, ps = [], []
        for i, (x, y) in enumerate(dataset):
            if i == args.n:
                break
            p = model.predict_proba_one(x)[True]  # predict first...
            model.learn_one(x, y)  # ...then learn from the click
            logloss.update(y, p)
            ys.append(y)
            ps.append(p)

    print(f"events: {len(ys)}, click rate: {sum(ys) / len(ys):.3f}")
    print(f"progressive LogLoss: {logloss.get():.4f}")
    if 0 < sum(ys) < len(ys):
        print(f"progressive ROC AUC: {roc_auc_score(ys, ps):.4f}")


if __name__ == "__main__":
    main()
