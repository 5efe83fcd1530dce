"""Throughput of data-parallel training with 1 and 2 Gloo workers on this machine.

Each configuration runs ``--repeats`` times; the table shows medians. Every worker
materialises its shard of a SyntheticCTR stream before the clock starts, so the numbers
are learning (and progressive validation) throughput, not data generation. Each
configuration runs with 1 worker on 1 thread and with 2 workers of ``cores // 2``
threads (``--layouts 1x2`` adds 1 worker on 2 threads: on a loaded machine, intra-op
threads that wait for each other make these small steps far slower). Communication is the wall-clock time rank 0 spends inside
collectives per step (a step is one synchronised batch in ``sync`` mode, one averaging
round in ``local_sgd`` mode); it includes waiting for the slower worker.

    python benchmarks/bench_distributed.py [--n-events 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile

import torch.multiprocessing as mp

from river_torchrec.distributed import free_port, threads_per_worker

CONFIGS = {
    # name: (label, mode, embeddings, extra trainer options)
    "sync-hash": ("sync, hash ids", "sync", "hash", {}),
    "sync-dynamic": ("sync, dynamic ids", "sync", "dynamic", {}),
    "local-sgd": ("local SGD every 256 events, hash ids", "local_sgd", "hash", {"sync_every": 256}),
}

# Collective kinds shown in their own column; the rest are summed into "other".
COLUMNS = {
    "control all_reduce": "control",
    "dense all_reduce": "dense all_reduce",
    "sparse all_gather": "sparse all_gather",
    "keys all_gather": "keys all_gather",
    "average all_reduce": "average (dense)",
}


def _worker(rank: int, world: int, threads: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    import torch.distributed as dist

    from river_torchrec import CTRClassifier
    from river_torchrec.datasets import SyntheticCTR
    from river_torchrec.distributed import DistributedCTR, init_process_group, shard

    init_process_group("gloo", timeout=300, threads=threads)
    events = list(shard(SyntheticCTR(n_events=cfg["n_events"], seed=cfg["seed"]), rank, world))
    clf = CTRClassifier(model=cfg["model"], embeddings=cfg["embeddings"], seed=cfg["seed"])
    trainer = DistributedCTR(clf, mode=cfg["mode"], batch_size=cfg["batch_size"], **cfg["extra"])
    dist.barrier()
    report = trainer.learn(events)
    if rank == 0:
        pathlib.Path(out).write_text(json.dumps(report.as_dict()))
    dist.destroy_process_group()


def run(world: int, threads: int, cfg: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        mp.start_processes(_worker, args=(world, threads, free_port(), cfg, out), nprocs=world, start_method="spawn")
        return json.loads(pathlib.Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="events per worker per step")
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--layouts",
        default=f"1x1,2x{threads_per_worker(2)}",
        help="comma-separated WORKERSxTHREADS layouts; the first is the speed-up's reference",
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, among {', '.join(CONFIGS)}")
    args = parser.parse_args()

    print(f"{args.model}, {args.n_events:,} SyntheticCTR events, {args.batch_size} events per worker per step, "
          f"{threads_per_worker(1)} cores, median of {args.repeats} runs; speed-up against the first layout\n")
    print("| configuration | workers | threads/worker | events/s | speed-up | progressive logloss | steps "
          "| comm ms/step | " + " | ".join(COLUMNS.values()) + " | other |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(COLUMNS) + 1))
    layouts = [tuple(int(v) for v in layout.split("x")) for layout in args.layouts.split(",")]
    for name in args.configs.split(","):
        label, mode, embeddings, extra = CONFIGS[name]
        base = None
        for world, threads in layouts:
            cfg = {
                "n_events": args.n_events, "seed": args.seed, "model": args.model, "mode": mode,
                "embeddings": embeddings, "batch_size": args.batch_size, "extra": extra,
            }  # fmt: skip
            reports = [run(world, threads, cfg) for _ in range(args.repeats)]
            eps = statistics.median(r["events_per_s"] for r in reports)
            base = base or eps
            comm = {k: statistics.median(r["comm_ms_per_step"].get(k, 0.0) for r in reports) for k in COLUMNS}
            total = statistics.median(sum(r["comm_ms_per_step"].values()) for r in reports)
            other = max(0.0, total - sum(comm.values()))
            cells = [f"{comm[k]:.3f}" if comm[k] else "–" for k in COLUMNS]
            print(
                f"| {label} | {world} | {threads} | {eps:,.0f} | {eps / base:.2f}x | "
                f"{statistics.median(r['logloss'] for r in reports):.4f} | {reports[0]['n_steps']} | "
                f"{total:.3f} | " + " | ".join(cells) + f" | {other:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
