"""Memory: RSS stays flat under an endless stream of new ids with ``max_rows``; the cost of a row.

Run ``python benchmarks/bench_memory.py`` (``--quick`` for a smoke run). Each part runs in a
process of its own, so the peak RSS it reports is its own. Two markdown tables:

1. Flat memory: ``--events`` (2,000,000) events, each with a never-seen user id and a
   never-seen item id (plus a device, an hour and a price), learned in frames of 2,000 with
   ``learn_many`` by a DeepFM (``embedding_dim=8``, Adam) with ``max_rows=100_000``: the
   table fills up, then recycles its least recently used rows. Current and peak RSS every
   200,000 events; they stay flat once the table is full.
2. The cost of a row: 10^6 distinct ids learned with ``max_rows=None``, with Adam and with
   SGD (no per-row updater state). The growth of RSS per id, split into the float32 table,
   the updater state and the rest (the vocabulary: fingerprints, index and key bytes),
   against the raw float32 size of 10^6 rows of the same width.
3. Bytes per learned id as a slope (``--slope``): 10^6 and 10^7 distinct ids of one field,
   learned by ``learn_many`` in frames of 10,000, each count in a process of its own, for
   the default model (float32 rows, Adagrad) and for ``embedding_dtype="float16"`` with
   row-wise Adagrad. RSS after the run (``gc.collect()`` and ``malloc_trim(0)`` first) and
   peak RSS (``VmHWM``) at both points; bytes per id = the difference between the points
   divided by the 9 x 10^6 ids between them (targets: <= 100 and <= 64 bytes). A second
   table splits the slope into the rows, the updater state of those rows and the
   vocabulary's arrays, computed from their sizes, and the rest of the RSS growth.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

from river_torchrec import CTRClassifier

HERE = pathlib.Path(__file__).resolve()
MB = 2**20


def rss() -> int:
    """Current resident set size in bytes."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # Linux without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def frame(start: int, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.Series]:
    ids = range(start, start + n)
    X = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in ids],
            "item_id": [f"i{i}" for i in ids],
            "device": rng.choice(["mobile", "desktop", "tablet"], n),
            "hour": rng.integers(0, 24, n).astype(str),
            "price": rng.lognormal(3.0, 1.0, n),
        }
    )
    return X, pd.Series(rng.random(n) < 0.1)


def table_bytes(model: CTRClassifier) -> tuple[int, int]:
    """Bytes of the embedding table and of the updater's state of it."""
    weight = model.model_.embedding.weight
    state = sum(
        t.numel() * t.element_size()
        for k, t in model.updater.state_dict().items()
        if isinstance(t, torch.Tensor) and k.startswith("embedding.weight/")
    )
    return weight.numel() * weight.element_size(), state


def part_flat(n_events: int, max_rows: int, every: int) -> None:
    rng = np.random.default_rng(0)
    model = CTRClassifier(model="deepfm", max_rows=max_rows, seed=1)
    chunk = 2_000
    start = time.perf_counter()
    rows = []
    for done in range(0, n_events, chunk):
        X, y = frame(done, chunk, rng)
        model.learn_many(X, y)
        if (done + chunk) % every == 0:
            table, state = table_bytes(model)
            rows.append(
                {
                    "events": done + chunk,
                    "rows": len(model.model_.embedding),
                    "vocabulary": len(model.model_.embedding.key_to_row()),
                    "table_mb": (table + state) / MB,
                    "rss_mb": rss() / MB,
                    "peak_mb": peak_rss() / MB,
                    "seconds": time.perf_counter() - start,
                }
            )
    print(json.dumps(rows))


def part_row_cost(n_ids: int, optimizer: str) -> None:
    rng = np.random.default_rng(0)
    model = CTRClassifier(model="deepfm", optimizer=optimizer, seed=1)
    chunk = 10_000
    # Warm up on ids that will not count, so torch's allocations and imports are in the baseline.
    X, y = frame(-chunk, chunk, rng)
    model.learn_many(X.assign(user_id="warm", item_id="warm"), y)
    base_rss, base_rows = rss(), len(model.model_.embedding)
    base_table = sum(table_bytes(model))
    for done in range(0, n_ids, chunk):
        X, y = frame(done, chunk, rng)
        model.learn_many(X.assign(item_id="one item"), y)
    n = len(model.model_.embedding) - base_rows
    table, state = table_bytes(model)
    print(
        json.dumps(
            {
                "optimizer": optimizer,
                "ids": n,
                "width": model.model_.embedding.dim,
                "capacity": model.model_.embedding.capacity,
                "rss_growth": rss() - base_rss,
                "table": table,
                "state": state,
                "base_table": base_table,
                "peak": peak_rss(),
            }
        )
    )


SLOPE_CONFIGS = {
    "default (float32, Adagrad)": {},
    "float16, row-wise Adagrad": {"embedding_dtype": "float16", "optimizer": "rowwise_adagrad"},
}


def vm_hwm() -> int:
    """Peak resident bytes of this process since its ``execve`` (``VmHWM``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss()


def trimmed_rss() -> int:
    """Resident bytes after a collection and handing freed heap back to the OS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss()


def part_slope(n_ids: int, config: str) -> None:
    model = CTRClassifier(**SLOPE_CONFIGS[config], seed=1)
    chunk = 10_000
    labels = pd.Series([i % 7 == 0 for i in range(chunk)])
    model.learn_many(pd.DataFrame({"id": ["warm-up"] * 4}), pd.Series([True, False] * 2))
    base = trimmed_rss()
    start = time.perf_counter()
    for lo in range(0, n_ids, chunk):
        X = pd.DataFrame({"id": [f"id{i}" for i in range(lo, min(lo + chunk, n_ids))]})
        model.learn_many(X, labels[: len(X)])
        del X
    seconds = time.perf_counter() - start
    table = model.model_.embedding
    print(
        json.dumps(
            {
                "ids": len(table) - 1,
                "capacity": table.capacity,
                "rss": trimmed_rss(),
                "base": base,
                "peak": vm_hwm(),
                "seconds": seconds,
                **written_bytes(model),
            }
        )
    )


def written_bytes(model: CTRClassifier) -> dict[str, int]:
    """Bytes of the structures a learned id writes, from array sizes: the rows handed out,
    the updater's state of those rows, and the vocabulary (per-row arrays up to the last
    row, the whole index, the byte log)."""
    table = model.model_.embedding
    used = len(table) + 1
    rows = used * table.dim * table.weight.element_size()
    state = sum(
        t[:used].numel() * t.element_size()
        for k, t in model.updater.state_dict().items()
        if isinstance(t, torch.Tensor) and k.startswith("embedding.weight/")
    )
    keys = table._rows
    per_row = keys._fp.itemsize + keys._loc.itemsize + keys._meta.itemsize
    return {
        "rows_bytes": rows,
        "state_bytes": state,
        "vocab_rows_bytes": per_row * used,
        "index_bytes": keys._index.nbytes,
        "log_bytes": keys._n_bytes,
    }


def slope_table(small: int, large: int) -> str:
    lines = [
        f"\n### Bytes per learned id: slope from {small:,} to {large:,} distinct ids (DeepFM, dim 8: 9 values per row)\n",
        "| model | ids | capacity | RSS (MB) | peak RSS (MB) | RSS growth (MB) | time (s) | RSS slope (B/id) "
        "| peak RSS slope (B/id) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    parts = [
        f"\n#### Where the slope goes (bytes per id between the two points, from array sizes)\n",
        "| model | rows | updater state | vocabulary per-row arrays | index | key log | rest (RSS minus these) | RSS slope |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in SLOPE_CONFIGS:
        a = run_part("slope", str(small), config)
        b = run_part("slope", str(large), config)
        n = b["ids"] - a["ids"]
        rss_slope = (b["rss"] - a["rss"]) / n
        peak_slope = (b["peak"] - a["peak"]) / n
        target = 64 if "float16" in config else 100
        parts.append(
            f"| {config} | "
            + " | ".join(f"{(b[k] - a[k]) / n:.1f}" for k in ("rows_bytes", "state_bytes", "vocab_rows_bytes", "index_bytes", "log_bytes"))
            + f" | {(b['rss'] - a['rss']) / n - sum((b[k] - a[k]) / n for k in _PARTS):.1f} | {rss_slope:.1f} |"
        )
        for r, slopes in ((a, ("", "")), (b, (f"{rss_slope:.0f}", f"{peak_slope:.0f}"))):
            lines.append(
                f"| {config} | {r['ids']:,} | {r['capacity']:,} | {r['rss'] / MB:.0f} | {r['peak'] / MB:.0f} "
                f"| {(r['rss'] - r['base']) / MB:.0f} | {r['seconds']:.0f} | {slopes[0]} | {slopes[1]} "
                f"| {'<= ' + str(target) if slopes[0] else ''} |"
            )
    return "\n".join(lines + parts)


_PARTS = ("rows_bytes", "state_bytes", "vocab_rows_bytes", "index_bytes", "log_bytes")


def run_part(*args: str) -> object:
    out = subprocess.run([sys.executable, str(HERE), "--part", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--max-rows", type=int, default=100_000)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 events and 100,000 ids")
    parser.add_argument("--slope", action="store_true", help="only the bytes-per-id slope table")
    parser.add_argument("--slope-ids", type=int, nargs=2, default=(10**6, 10**7), metavar=("SMALL", "LARGE"))
    parser.add_argument("--part", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    if args.part:
        if args.part[0] == "flat":
            part_flat(int(args.part[1]), int(args.part[2]), int(args.part[3]))
        elif args.part[0] == "slope":
            part_slope(int(args.part[1]), " ".join(args.part[2:]))
        else:
            part_row_cost(int(args.part[1]), args.part[2])
        return

    if args.slope:
        small, large = (10**4, 10**5) if args.quick else args.slope_ids
        print(slope_table(small, large))
        return
    n_events = 200_000 if args.quick else args.events
    every = 20_000 if args.quick else 200_000
    n_ids = 100_000 if args.quick else args.ids
    rows = run_part("flat", str(n_events), str(args.max_rows), str(every))
    print(
        f"\n### Flat memory: {n_events:,} events, 2 new ids each, DeepFM (dim 8, Adam), max_rows={args.max_rows:,}\n"
    )
    print("| events | rows in use | vocabulary | table + Adam state (MB) | RSS (MB) | peak RSS (MB) | time (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['events']:,} | {r['rows']:,} | {r['vocabulary']:,} | {r['table_mb']:.1f} | {r['rss_mb']:.0f} "
            f"| {r['peak_mb']:.0f} | {r['seconds']:.0f} |"
        )
    full = [r["rss_mb"] for r in rows if r["rows"] >= args.max_rows]
    if full:
        print(f"\nRSS once the table is full: {min(full):.0f} to {max(full):.0f} MB ({max(full) - min(full):+.0f} MB).")

    print(f"\n### The cost of a row: {n_ids:,} distinct ids, DeepFM (dim 8: 9 float32 per row), max_rows=None\n")
    print(
        "| updater | RSS growth per id (B) | table per id (B) | updater state per id (B) | rest per id (B) "
        "| raw float32 row (B) | RSS growth (MB) | raw float32, 10^6 rows (MB) | peak RSS (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for optimizer in ("adam", "sgd"):
        r = run_part("rows", str(n_ids), optimizer)
        n, raw_row = r["ids"], 4 * r["width"]
        table = r["table"] + r["state"] - r["base_table"]
        rest = r["rss_growth"] - table
        print(
            f"| {optimizer} | {r['rss_growth'] / n:.0f} | {r['table'] / n:.0f} | {r['state'] / n:.0f} | {rest / n:.0f} "
            f"| {raw_row} | {r['rss_growth'] / MB:.0f} | {raw_row * 10**6 / MB:.1f} | {r['peak'] / MB:.0f} |"
        )
    print(
        "\nThe table grows by doubling its capacity (here to "
        f"{r['capacity']:,} rows), so per-id table bytes include the unused tail of the last doubling."
    )


if __name__ == "__main__":
    main()
