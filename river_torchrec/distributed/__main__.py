"""Command line of a distributed run: ``torchrun --nproc-per-node N -m river_torchrec.distributed ...``.

Every worker runs this module; ``torchrun`` gives each its rank through the environment.
Without ``torchrun`` it runs as a single worker. Rank 0 prints progress on stderr and the
final summary on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from river_torchrec.classifier import CTRClassifier
from river_torchrec.distributed.group import WorkerFailure, init_process_group
from river_torchrec.distributed.shard import shard
from river_torchrec.distributed.trainer import DistributedCTR

DATASETS = ("synthetic", "criteo", "avazu", "movielens")
_SAMPLES = {
    "criteo": "criteo_dac_head10k.csv.gz",
    "avazu": "avazu_head10k.csv.gz",
    "movielens": "movielens100k_ratings.csv.gz",
}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m river_torchrec.distributed",
        description="Data-parallel online learning of a CTRClassifier; launch one process per "
        "worker with torchrun (e.g. torchrun --nproc-per-node 2 -m river_torchrec.distributed ...).",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="synthetic")
    g.add_argument("--data", help="file (or MovieLens folder) of a real dataset; default: the sample in ../shared/data")
    g.add_argument(
        "--n-events",
        type=int,
        default=20_000,
        help="events: the synthetic stream's length, else a cap (not --n: torchrun's parser reads --n as its own)",
    )
    g.add_argument("--n-users", type=int, default=1_000, help="synthetic: users")
    g.add_argument("--n-items", type=int, default=500, help="synthetic: items")
    g.add_argument("--key", default="user_id", help="field to shard by; 'none' for round-robin")
    g.add_argument("--fields", type=_csv, help="comma-separated fields declared up front (others are ignored)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="deepfm")
    g.add_argument("--embedding-dim", type=int, default=8)
    g.add_argument("--hidden-units", type=lambda s: tuple(int(v) for v in _csv(s)), default=(64, 32))
    g.add_argument("--embeddings", choices=("dynamic", "hash"), default="hash")
    g.add_argument("--n-buckets", type=int, default=2**18)
    g.add_argument("--min-count", type=int, default=1)
    g.add_argument("--max-rows", type=int)
    g.add_argument("--optimizer", default="adam")
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("distribution")
    g.add_argument("--mode", choices=("sync", "local_sgd"), default="sync")
    g.add_argument("--batch-size", type=int, default=32, help="events per worker per step")
    g.add_argument("--sync-every", type=int, default=256, help="local_sgd: events per worker between averages")
    g.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    g.add_argument("--device", default="cpu", help="cpu or cuda (each worker takes the GPU of its LOCAL_RANK)")
    g.add_argument("--threads", type=int, help="intra-op threads per worker (default: cores // local workers)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds before a silent worker fails the others")
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--checkpoint-dir", help="folder of checkpoints (visible to every worker)")
    g.add_argument("--checkpoint-every", type=int, help="events (all workers) between checkpoints")
    g.add_argument("--resume", action="store_true", help="resume from the newest checkpoint, if any")
    g.add_argument("--no-eval", action="store_true", help="skip progressive validation")
    g.add_argument("--check-every", type=int, help="verify every N steps that the replicas are identical")
    g.add_argument("--log-every", type=int, help="events between progress lines")
    g.add_argument("--json", action="store_true", help="print the final report as one JSON line")
    return p


def dataset(args: argparse.Namespace) -> Iterable[tuple[dict, Any]]:
    from river_torchrec import datasets

    if args.dataset == "synthetic":
        return datasets.SyntheticCTR(n_events=args.n_events, n_users=args.n_users, n_items=args.n_items, seed=args.seed)
    if args.data is not None:
        path = pathlib.Path(args.data)
    else:
        path = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / _SAMPLES[args.dataset]
    cls = {"criteo": datasets.Criteo, "avazu": datasets.Avazu, "movielens": datasets.MovieLens100K}
    return itertools.islice(cls[args.dataset](path), args.n_events)


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.mode == "local_sgd" and args.embeddings != "hash":
        cli.error("--mode local_sgd needs --embeddings hash (rows are averaged by index)")
    device = init_process_group(args.backend, args.timeout, args.device, args.threads)
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    clf = CTRClassifier(
        model=args.model,
        embedding_dim=args.embedding_dim,
        hidden_units=args.hidden_units,
        embeddings=args.embeddings,
        n_buckets=args.n_buckets,
        min_count=args.min_count,
        max_rows=args.max_rows,
        optimizer=args.optimizer,
        lr=args.lr,
        device=str(device),
        seed=args.seed,
    )

    def progress(p: dict) -> None:
        loss = "n/a" if p["logloss"] is None else f"{p['logloss']:.4f}"
        print(f"step {p['step']} events {p['events']} logloss {loss} {p['seconds']:.1f} s", file=sys.stderr, flush=True)

    try:
        trainer = DistributedCTR(
            clf,
            mode=args.mode,
            batch_size=args.batch_size,
            sync_every=args.sync_every,
            fields=args.fields,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            evaluate=not args.no_eval,
            check_every=args.check_every,
            on_progress=progress,
            log_every=args.log_every,
            timeout=args.timeout,
        )
        key = None if args.key.lower() == "none" else args.key
        report = trainer.learn(shard(dataset(args), rank, world, key=key), resume=args.resume)
    except WorkerFailure as exc:
        print(f"river_torchrec.distributed: error: {exc}", file=sys.stderr, flush=True)
        # The group is broken: leave without the collective teardown, which could wait on
        # the dead worker.
        os._exit(1)
    if rank == 0:
        if args.json:
            print(json.dumps(report.as_dict()), flush=True)
        else:
            loss = "n/a" if report.logloss is None else f"{report.logloss:.4f}"
            comm = ", ".join(f"{k} {v:.3f}" for k, v in report.comm_ms_per_step.items())
            print(
                f"{world} workers, mode {report.mode}: {report.n_events} events in {report.n_steps} steps, "
                f"{report.events_per_s:,.0f} events/s, progressive logloss {loss}; "
                f"communication ms/step: {comm}",
                flush=True,
            )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
