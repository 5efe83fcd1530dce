"""Save a model mid-stream, load it back (say, in a new process) and keep learning.

    python examples/save_and_resume.py --n 20000

``CTRClassifier.save`` writes a checkpoint folder (safetensors weights and JSON, written
atomically, with checksums) holding everything needed to resume exactly: weights,
vocabularies, optimizer state. ``CTRClassifier.load`` reads it back without unpickling
anything. The resumed model makes the same predictions and the same updates as one that
never stopped.

The transformers in front of a model learn too: ``river_torchrec.save_pipeline`` checkpoints
a whole river pipeline (here a ``DecayedCTREncoder``'s click counts, a ``StandardScaler``'s
running means and the classifier) the same safe way, and ``load_pipeline`` resumes it.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from river import compose, metrics, preprocessing

from river_torchrec import CTRClassifier, load_pipeline, save_pipeline
from river_torchrec.datasets import SyntheticCTR
from river_torchrec.features import DecayedCTREncoder


def resume_and_compare(kept, resumed, events: list) -> tuple[float, float, float]:
    """LogLoss of both copies on ``events`` (each learns them) and their largest prediction gap."""
    loss_kept, loss_resumed = metrics.LogLoss(), metrics.LogLoss()
    max_gap = 0.0
    for x, y in events:
        p_kept = kept.predict_proba_one(x)[True]
        p_resumed = resumed.predict_proba_one(x)[True]
        max_gap = max(max_gap, abs(p_kept - p_resumed))
        loss_kept.update(y, p_kept)
        loss_resumed.update(y, p_resumed)
        kept.learn_one(x, y)
        resumed.learn_one(x, y)
    return loss_kept.get(), loss_resumed.get(), max_gap


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
    loss_kept, loss_resumed, max_gap = resume_and_compare(model, resumed, second)
    print(f"on the next {len(second)} events: LogLoss {loss_kept:.4f} (never stopped), "
          f"LogLoss {loss_resumed:.4f} (resumed)")
    print(f"largest difference between their predictions: {max_gap:.2e}")

    # A whole pipeline: every step's state goes into the checkpoint.
    pipeline = compose.TransformerUnion(
        compose.SelectType(str),
        compose.SelectType(float) | preprocessing.StandardScaler(),
    ) | DecayedCTREncoder(fields=["item_id"]) | CTRClassifier(model="fm", numeric="raw", seed=args.seed)
    for x, y in first:
        pipeline.learn_one(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "pipeline-checkpoint"
        save_pipeline(pipeline, path)
        print(f"pipeline saved: {', '.join(sorted(f.name for f in path.iterdir()))}")
        resumed_pipeline = load_pipeline(path)
    loss_kept, loss_resumed, max_gap = resume_and_compare(pipeline, resumed_pipeline, second)
    print(f"pipeline on the next {len(second)} events: LogLoss {loss_kept:.4f} (never stopped), "
          f"LogLoss {loss_resumed:.4f} (resumed); largest gap {max_gap:.2e}")


if __name__ == "__main__":
    main()
