"""Run a model on the GPU when there is one: ``device="auto"``.

    python examples/gpu.py --n 50000 --batch-size 256

``"auto"`` picks CUDA, then Apple's MPS, then the CPU, so the same script runs anywhere.
A GPU pays off with mini-batches: one step per event is dominated by launch latency,
so on a GPU give ``learn_one`` a ``batch_size`` (it buffers events and takes one step per
batch; predictions use the weights of the last step) or call ``learn_many`` on frames.
"""

from __future__ import annotations

import argparse
import time

from river import metrics

from river_torchrec import CTRClassifier
from river_torchrec.datasets import SyntheticCTR


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    model = CTRClassifier(model="deepfm", device=args.device, batch_size=args.batch_size, seed=args.seed)
    print(f"device {args.device!r} -> {next(model.model_.parameters()).device}")

    logloss = metrics.LogLoss()
    start = time.perf_counter()
    for x, y in SyntheticCTR(n_events=args.n, seed=args.seed):
        logloss.update(y, model.predict_proba_one(x))
        model.learn_one(x, y)
    model.flush()  # learn from the events still buffered
    seconds = time.perf_counter() - start
    print(f"{args.n} events, batch size {args.batch_size}: LogLoss {logloss.get():.4f}, "
          f"{args.n / seconds:,.0f} events/s")


if __name__ == "__main__":
    main()
