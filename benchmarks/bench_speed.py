"""Speed targets, round two: per event against Vowpal Wabbit, frames against bare PyTorch.

Run ``python benchmarks/bench_speed.py`` (``--quick`` for a smoke run, ``--profile`` to add a
cProfile of our per-event loop). Everything runs in this one process with
``torch.set_num_threads(1)``; the contenders of a table take turns, run after run, so a
change of machine load hits all of them alike, and each cell is the median of ``--runs``
runs (each from a fresh model). Markdown tables:

1. Per event (``predict_proba_one`` then ``learn_one``, progressive validation) on a stream
   where about 43% of events bring a user id never seen before (``SyntheticCTR`` with
   ``n_users = 0.6 * n_events``, uniform popularity) and on the Criteo sample: the default
   ``CTRClassifier()`` against Vowpal Wabbit's Python binding, linear and ``-q ::``
   (``benchmarks/peers/models.py``: the text formatting of each event is timed), with
   LogLoss and exact ROC AUC on the first run's predictions.
2. ``predict_proba_many`` then ``learn_many`` on 1,024-event frames (built before the clock
   starts) against the hand-written loop of ``benchmarks/peers/bare_torch.py`` on
   pre-built tensors; both DeepFM with Adam at lr 1e-3.
3. Per-event cost against table size: the default model with its vocabulary pre-filled to
   ``2**24`` rows (``--big-rows``) against a fresh one (capacity ``2**10``), both learning
   the same events in lockstep.
4. ``predict_proba_one`` latency of a warm model (trained by ``learn_many`` on the stream):
   ``perf_counter_ns`` around each of 10,000 calls after 200 warm-up calls, p50 and p99.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import pathlib
import pstats
import statistics
import sys
import time
import warnings

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import bare_torch  # noqa: E402
from peers.models import VW_ARGS, build  # noqa: E402
from peers.scores import auc, logloss  # noqa: E402
from peers.worker import frames, time_predictions, warm_model  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
#: The frame comparison pins Adam at lr 1e-3, the updater of the bare loop.
MANY = {"model": "deepfm", "embedding_dim": 8, "hidden_units": [64, 32], "optimizer": "adam", "lr": 1e-3}


def new_id_stream(n: int, seed: int = 42) -> list:
    """A click stream where about 43% of events bring a never-seen user id."""
    from river_torchrec.datasets import SyntheticCTR

    ds = SyntheticCTR(n_events=n, n_users=int(0.6 * n), n_items=max(10, n // 10), popularity_exponent=0.0, seed=seed)
    return list(ds)


def criteo(data: pathlib.Path, limit: int | None) -> list | None:
    from river_torchrec.datasets import Criteo

    path = data / "criteo_dac_head10k.csv.gz"
    if not path.exists():
        return None
    return list(itertools.islice(Criteo(path), limit))


def new_user_share(events: list) -> float:
    seen: set = set()
    new = 0
    for x, _ in events:
        u = x.get("user_id")
        if u is not None and u not in seen:
            seen.add(u)
            new += 1
    return new / len(events)


def md(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def variants() -> dict[str, dict]:
    """Our default, and, where the classifier has a poisoning defence (on by default), the
    default without it: the defence is a per-event cost of its own, measured apart."""
    import inspect

    from river_torchrec import CTRClassifier

    out = {"river-torchrec default": {}}
    if "defence" in inspect.signature(CTRClassifier).parameters:
        out["river-torchrec default, defence=None"] = {"defence": None}
    return out


def per_event(events: list, runs: int) -> dict[str, dict]:
    """events/s (each run) and scores of our default and Vowpal Wabbit, taking turns."""
    specs = {name: {"kind": "ours", "params": params} for name, params in variants().items()}
    specs["Vowpal Wabbit (linear)"] = {"kind": "vw", "params": {"args": VW_ARGS}}
    specs["Vowpal Wabbit (-q ::)"] = {"kind": "vw", "params": {"args": VW_ARGS + " -q ::"}}
    out = {name: {"eps": [], "preds": None} for name in specs}
    for _ in range(runs):
        for name, spec in specs.items():
            learner = build(spec)
            step = learner.step
            preds = []
            gc.collect()
            start = time.perf_counter()
            for x, y in events:
                preds.append(step(x, y))
            out[name]["eps"].append(len(events) / (time.perf_counter() - start))
            out[name]["preds"] = out[name]["preds"] or preds
            del learner
    y = np.array([float(t) for _, t in events])
    for r in out.values():
        p = np.array(r.pop("preds"), dtype=float)
        r["logloss"], r["auc"] = logloss(y, p), auc(y, p)
    return out


def per_event_table(title: str, res: dict) -> str:
    ours = statistics.median(res["river-torchrec default"]["eps"])
    rows = []
    for name, r in res.items():
        eps = statistics.median(r["eps"])
        rows.append(
            [name, f"{eps:,.0f}", ", ".join(f"{e:,.0f}" for e in r["eps"]), f"{ours / eps:.2f}x",
             f"{r['logloss']:.4f}", f"{r['auc']:.4f}"]
        )
    headers = ["model", "events/s (median)", "runs", "default ÷ model", "LogLoss", "ROC AUC"]
    return f"\n#### Per event: {title}\n\n" + md(headers, rows)


def many_vs_bare(events: list, runs: int) -> dict:
    import torch

    from river_torchrec import CTRClassifier

    batches = frames(events)
    ids, vals, y, n_rows = bare_torch.encode(events)
    out: dict[str, list] = {name: [] for name in variants()}
    out["bare"] = []
    for _ in range(runs):
        for name, params in variants().items():
            model = CTRClassifier(**MANY, **params)
            gc.collect()
            start = time.perf_counter()
            for X, t in batches:
                model.predict_proba_many(X)
                model.learn_many(X, t)
            out[name].append(len(events) / (time.perf_counter() - start))
            del model
        gc.collect()
        seconds, _ = bare_torch.run(ids, vals, y, n_rows, batch_size=1024)
        out["bare"].append(len(events) / seconds)
    del torch
    return out


def many_table(results: dict[str, dict]) -> str:
    rows = []
    for stream, r in results.items():
        b = statistics.median(r["bare"])
        for name, eps in r.items():
            if name == "bare":
                continue
            o = statistics.median(eps)
            ratio = b / o
            rows.append(
                [stream, name.removeprefix("river-torchrec "), f"{o:,.0f}", f"{b:,.0f}", f"{ratio:.2f}x",
                 "met" if ratio <= 1.3 else f"missed by {ratio / 1.3:.2f}x"]
            )
    headers = ["stream", "ours", "learn_many + predict_proba_many events/s", "bare PyTorch events/s", "bare ÷ ours", "<= 1.3x"]
    return "\n#### Frames of 1,024 events against the bare PyTorch loop (DeepFM, Adam lr 1e-3)\n\n" + md(headers, rows)


def prefill(model, n_rows: int) -> None:
    """Give the model's table ``n_rows`` learned keys of a field no event has."""
    table = model.model_.embedding
    chunk = 1 << 16
    done = len(table)
    while done < n_rows:
        n = min(chunk, n_rows - done)
        table.lookup([("filler", f"k{i}") for i in range(done, done + n)], learn=True)
        done += n


def flat_in_size(events: list, runs: int, big_rows: int) -> dict:
    from river_torchrec import CTRClassifier

    small, big = CTRClassifier(), CTRClassifier()
    warm = events[:1000]
    for m in (small, big):
        for x, y in warm:
            m.predict_proba_one(x)
            m.learn_one(x, y)
    t0 = time.perf_counter()
    prefill(big, big_rows)
    fill_s = time.perf_counter() - t0
    rest = events[1000:]
    size = len(rest) // runs
    out = {"small": [], "big": [], "big_rows": len(big.model_.embedding), "big_capacity": big.model_.embedding.capacity,
           "small_capacity_start": 1024, "fill_s": fill_s}
    for r in range(runs):
        part = rest[r * size : (r + 1) * size]
        for name, m in (("small", small), ("big", big)):
            gc.collect()
            start = time.perf_counter()
            for x, y in part:
                m.predict_proba_one(x)
                m.learn_one(x, y)
            out[name].append(len(part) / (time.perf_counter() - start))
    out["small_rows"] = len(small.model_.embedding)
    return out


def flat_table(r: dict) -> str:
    s, b = statistics.median(r["small"]), statistics.median(r["big"])
    ratio = s / b
    rows = [
        [f"{r['small_rows']:,} rows (capacity 2^10 at the start)", f"{s:,.0f}", ", ".join(f"{e:,.0f}" for e in r["small"]), "1.00x"],
        [f"{r['big_rows']:,} rows (capacity {r['big_capacity']:,})", f"{b:,.0f}", ", ".join(f"{e:,.0f}" for e in r["big"]), f"{ratio:.2f}x"],
    ]
    verdict = "met" if ratio <= 1.2 else f"missed by {ratio / 1.2:.2f}x"
    return (
        "\n#### Per-event cost against table size (default model, same events in lockstep)\n\n"
        + md(["table", "events/s (median)", "runs", "cost ÷ small table's"], rows)
        + f"\n\nBig ÷ small per-event cost: {ratio:.2f}x (target <= 1.2x: {verdict}); pre-filling took {r['fill_s']:.0f} s."
    )


def latency(events: list, runs: int, n_calls: int) -> dict:
    return time_predictions(warm_model({}, events), events, runs, n_calls)


def latency_table(r: dict) -> str:
    p50, p99 = statistics.median(r["p50_us"]), statistics.median(r["p99_us"])
    rows = [[f"{r['n_calls']:,}", f"{p50:.1f}", f"{p99:.1f}", ", ".join(f"{v:.1f}" for v in r["p99_us"]), "met" if p99 < 100 else "missed"]]
    return "\n#### predict_proba_one latency, warm default model (µs)\n\n" + md(
        ["calls per run", "p50", "p99 (median)", "p99 runs", "p99 < 100 µs"], rows
    )


def profile(events: list) -> str:
    from river_torchrec import CTRClassifier

    model = CTRClassifier()
    prof = cProfile.Profile()
    prof.enable()
    for x, y in events:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    return "\n#### cProfile of the per-event loop (default model, new-id stream)\n\n```\n" + buf.getvalue().strip() + "\n```"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=50_000, help="events of the new-id stream")
    parser.add_argument("--big-rows", type=int, default=2**24)
    parser.add_argument("--quick", action="store_true", help="2,000 events, 2^14 rows, 2 runs: a smoke run")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", default="event,many,flat,latency")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    if args.quick:
        args.events, args.big_rows, args.runs = 2_000, 2**14, min(args.runs, 2)
    only = set(args.only.split(","))
    stream = new_id_stream(args.events)
    crit = criteo(args.data, 2_000 if args.quick else None)
    print(
        f"New-id stream: SyntheticCTR(n_events={args.events:,}, n_users={int(0.6 * args.events):,}, "
        f"popularity_exponent=0), {new_user_share(stream):.1%} of events with a new user id; "
        f"runs per cell: {args.runs}; torch threads: 1."
    )
    if "event" in only:
        print(per_event_table(f"new-id stream, {len(stream):,} events", per_event(stream, args.runs)))
        if crit is None:
            print(f"\nCriteo sample: skipped (no criteo_dac_head10k.csv.gz under {args.data})")
        else:
            print(per_event_table(f"Criteo sample, {len(crit):,} events", per_event(crit, args.runs)))
    if "many" in only:
        res = {f"new-id stream ({len(stream):,})": many_vs_bare(stream, args.runs)}
        if crit is not None:
            res[f"Criteo sample ({len(crit):,})"] = many_vs_bare(crit, args.runs)
        print(many_table(res))
    if "flat" in only:
        print(flat_table(flat_in_size(new_id_stream(max(args.events, 4_000), seed=7), args.runs, args.big_rows)))
    if "latency" in only:
        print(latency_table(latency(stream, args.runs, 2_000 if args.quick else 10_000)))
    if args.profile:
        print(profile(stream[: min(len(stream), 20_000)]))


if __name__ == "__main__":
    main()
