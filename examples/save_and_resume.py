"""Save a model mid-stream, load it back (say, in a new process) and keep learning.

    python examples/save_and_resume.py --n 20000

``CTRClassifier.save`` writes a checkpoint folder (safetensors weights and JSON, written
atomically, with checksums) holding everything needed to resume exactly: weights,
vocabularies, optimizer state. ``CTRClassifier.load`` reads it back without unpickling
anything. The resumed model makes the same predictions and the same updates as one that
never stopped.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from river import metrics

from river_torchrec import CTRClassifier
from river_torchrec.datasets import SyntheticCTR


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    events = list(SyntheticCTR(n_events=args.n, seed=args.seed))
    first, second = events[: args.n // 2], events[args.n // 2 :]

    model = CTRClassifier(model="deepfm", seed=args.seed)
    for x, y in first:
        model.learn_one(x, y)

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "deepfm-checkpoint"
        model.save(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"saved after {len(first)} events: {path.name}/ ({size / 1024:.0f} KiB)")
        resumed = CTRClassifier.load(path)

    # Both copies go on with the same events: their predictions must agree.
    loss_kept, loss_resumed = metrics.LogLoss(), metrics.LogLoss()
    max_gap = 0.0
    for x, y in second:
        p_kept = model.predict_proba_one(x)[True]
        p_resumed = resumed.predict_proba_one(x)[True]
        max_gap = max(max_gap, abs(p_kept - p_resumed))
        loss_kept.update(y, p_kept)
        loss_resumed.update(y, p_resumed)
        model.learn_one(x, y)
        resumed.learn_one(x, y)
    print(f"on the next {len(second)} events: LogLoss {loss_kept.get():.4f} (never stopped), "
          f"LogLoss {loss_resumed.get():.4f} (resumed)")
    print(f"largest difference between their predictions: {max_gap:.2e}")


if __name__ == "__main__":
    main()
