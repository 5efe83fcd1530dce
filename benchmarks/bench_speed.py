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
   LogLoss and exact ROC AUC on the first run's predictions. Besides wall-clock events/s,
   CPU events/s (``time.thread_time``: the time this thread ran, which a loaded machine's
   waits for a core do not inflate).
2. ``predict_proba_many`` then ``learn_many`` on 1,024-event frames (built before the clock
   starts) against the hand-written loop of ``benchmarks/peers/bare_torch.py`` on
   pre-built tensors; both DeepFM with Adam at lr 1e-3.
3. Per-event cost against table size: the default model with its vocabulary pre-filled to
   ``2**24`` rows (``--big-rows``) against a fresh one (capacity ``2**10``), both learning
   the same events in lockstep.
4. ``predict_proba_one`` latency of a warm model (trained by ``learn_many`` on the stream):
   ``perf_counter_ns`` around each of 10,000 calls after 200 warm-up calls, p50 and p99.
5. The CPU time of ``predict_proba_one`` and ``learn_one`` of a warm default model, and of the
   compiled forward pass and step alone (``time.thread_time_ns``).
6. Start-up: the seconds a fresh process takes for its first ``predict_proba_one`` +
   ``learn_one`` and first ``learn_many`` (numba, when installed, loads the compiled steps from
   its on-disk cache, or compiles them the first time: both measured, in fresh processes).

Before any clock starts, one small model predicts and learns a few events and a frame, so
that the one-off loading of the compiled steps (table 5) is not charged to the first run.
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


def warm_up() -> None:
    """Load whatever a first step loads (numba's compiled steps, when installed) before timing."""
    import pandas as pd

    from river_torchrec import CTRClassifier

    for params in ({}, MANY):
        model = CTRClassifier(**params)
        events = new_id_stream(64, seed=1)
        for x, y in events[:4]:
            model.predict_proba_one(x)
            model.learn_one(x, y)
        X = pd.DataFrame([x for x, _ in events])
        model.predict_proba_many(X)
        model.learn_many(X, pd.Series([y for _, y in events]))


_START = """
import time
t0 = time.perf_counter()
import pandas as pd
from river_torchrec import CTRClassifier, datasets
events = list(datasets.SyntheticCTR(n_events=64, seed=1))
t1 = time.perf_counter()
m = CTRClassifier()
m.predict_proba_one(events[0][0]); m.learn_one(*events[0]); m.predict_proba_one(events[1][0]); m.learn_one(*events[1])
t2 = time.perf_counter()
m.learn_many(pd.DataFrame([x for x, _ in events]), pd.Series([y for _, y in events]))
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def start_up(cold: bool) -> dict:
    """Seconds of import, first one-event steps and first frame in fresh processes: with numba's
    on-disk cache as it is, and (``cold``) with an empty cache directory, i.e. compiling."""
    import os
    import subprocess
    import tempfile

    out = {}
    cases = [("cached", None)] + ([("cold (compiling)", tempfile.mkdtemp(prefix="numba-cold-"))] if cold else [])
    for name, cache in cases:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if cache is not None:
            env["NUMBA_CACHE_DIR"] = cache
        res = subprocess.run([sys.executable, "-c", _START], env=env, capture_output=True, text=True, check=True)
        out[name] = [float(v) for v in res.stdout.split()]
    return out


def start_table(r: dict) -> str:
    try:
        import numba

        have = f"numba {numba.__version__}"
    except ImportError:
        have = "numba not installed: the NumPy twin, nothing to compile"
    rows = [[name, f"{a:.2f}", f"{b:.2f}", f"{c:.2f}"] for name, (a, b, c) in r.items()]
    return f"\n#### Start-up of a fresh process (s; {have})\n\n" + md(
        ["numba cache", "import + 64 events", "first 2 predict_proba_one + learn_one", "first learn_many (64 rows)"], rows
    )


def md(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def kernel_available() -> bool:
    """Whether this river-torchrec has compiled one-event steps and numba to run them."""
    try:
        from river_torchrec import _kernels
    except ImportError:
        return False
    return _kernels.available()


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
    if kernel_available():
        # The same default without the compiled step: what runs where numba is not installed.
        specs["river-torchrec default, NumPy twin (no numba)"] = {"kind": "ours", "params": {}, "no_kernel": True}
    specs["Vowpal Wabbit (linear)"] = {"kind": "vw", "params": {"args": VW_ARGS}}
    specs["Vowpal Wabbit (-q ::)"] = {"kind": "vw", "params": {"args": VW_ARGS + " -q ::"}}
    out = {name: {"eps": [], "cpu_eps": [], "preds": None} for name in specs}
    for _ in range(runs):
        for name, spec in specs.items():
            learner = build(spec)
            if spec.get("no_kernel"):
                learner.model._use_kernel = False
            step = learner.step
            preds = []
            gc.collect()
            cpu, start = time.thread_time(), time.perf_counter()
            for x, y in events:
                preds.append(step(x, y))
            out[name]["eps"].append(len(events) / (time.perf_counter() - start))
            out[name]["cpu_eps"].append(len(events) / (time.thread_time() - cpu))
            out[name]["preds"] = out[name]["preds"] or preds
            del learner
    y = np.array([float(t) for _, t in events])
    for r in out.values():
        p = np.array(r.pop("preds"), dtype=float)
        r["logloss"], r["auc"] = logloss(y, p), auc(y, p)
    return out


def per_event_table(title: str, res: dict) -> str:
    ours = statistics.median(res["river-torchrec default"]["eps"])
    ours_cpu = statistics.median(res["river-torchrec default"]["cpu_eps"])
    rows = []
    for name, r in res.items():
        eps, cpu = statistics.median(r["eps"]), statistics.median(r["cpu_eps"])
        rows.append(
            [name, f"{eps:,.0f}", ", ".join(f"{e:,.0f}" for e in r["eps"]), f"{ours / eps:.2f}x",
             f"{cpu:,.0f}", f"{ours_cpu / cpu:.2f}x", f"{r['logloss']:.4f}", f"{r['auc']:.4f}"]
        )
    headers = ["model", "events/s (median)", "runs", "default ÷ model", "CPU events/s (median)",
               "default ÷ model (CPU)", "LogLoss", "ROC AUC"]
    return f"\n#### Per event: {title}\n\n" + md(headers, rows)


def many_vs_bare(events: list, runs: int) -> dict:
    import torch

    from river_torchrec import CTRClassifier

    batches = frames(events)
    ids, vals, y, n_rows = bare_torch.encode(events)
    out: dict[str, list] = {name: [] for name in variants()}
    out["bare"] = []
    cpu: dict[str, list] = {name: [] for name in out}
    def bare_setup() -> float:
        """CPU seconds of the bare loop's set-up (model and optimizers), which run() leaves out of its clock."""
        clock = time.thread_time()
        torch.manual_seed(42)
        model = bare_torch.BareDeepFM(n_rows, ids.shape[1], 8, (64, 32))
        torch.optim.SparseAdam(list(model.embedding.parameters()), lr=1e-3)
        torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("embedding")], lr=1e-3)
        return time.thread_time() - clock

    bare_setup()  # its first call pays one-off initialisations
    for _ in range(runs):
        for name, params in variants().items():
            model = CTRClassifier(**MANY, **params)
            gc.collect()
            clock, start = time.thread_time(), time.perf_counter()
            for X, t in batches:
                model.predict_proba_many(X)
                model.learn_many(X, t)
            out[name].append(len(events) / (time.perf_counter() - start))
            cpu[name].append(len(events) / (time.thread_time() - clock))
            del model
        gc.collect()
        clock = time.thread_time()
        seconds, _ = bare_torch.run(ids, vals, y, n_rows, batch_size=1024)
        cpu_seconds = time.thread_time() - clock - bare_setup()  # run() times its loop only; so does this
        out["bare"].append(len(events) / seconds)
        cpu["bare"].append(len(events) / cpu_seconds)
    del torch
    return {"wall": out, "cpu": cpu}


def many_table(results: dict[str, dict]) -> str:
    rows = []
    for stream, both in results.items():
        r, c = both["wall"], both["cpu"]
        b, bc = statistics.median(r["bare"]), statistics.median(c["bare"])
        for name, eps in r.items():
            if name == "bare":
                continue
            o, oc = statistics.median(eps), statistics.median(c[name])
            ratio, ratio_cpu = b / o, bc / oc
            rows.append(
                [stream, name.removeprefix("river-torchrec "), f"{o:,.0f}", f"{b:,.0f}", f"{ratio:.2f}x",
                 f"{oc:,.0f}", f"{bc:,.0f}", f"{ratio_cpu:.2f}x",
                 "met" if ratio_cpu <= 1.3 else f"missed by {ratio_cpu / 1.3:.2f}x"]
            )
    headers = ["stream", "ours", "learn_many + predict_proba_many events/s", "bare PyTorch events/s", "bare ÷ ours",
               "ours CPU events/s", "bare CPU events/s", "bare ÷ ours (CPU)", "<= 1.3x (CPU)"]
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


def kernel_split(events: list, n_calls: int) -> dict | None:
    """CPU µs per call of the compiled forward pass and step alone, and of the whole
    ``predict_proba_one`` + ``learn_one`` (``defence=None`` and default), on a warm default
    model: where the per-event time goes. None without the compiled steps."""
    if not kernel_available():
        return None
    from river_torchrec import CTRClassifier

    out = {}
    for name, params in (("defence=None", {"defence": None}), ("default", {})):
        model = CTRClassifier(**params)
        for x, y in events[:1000]:
            model.predict_proba_one(x)
            model.learn_one(x, y)
        rest = events[1000 : 1000 + n_calls]
        clock = time.thread_time_ns
        predict = learn = 0
        for x, y in rest:
            a = clock()
            model.predict_proba_one(x)
            b = clock()
            model.learn_one(x, y)
            learn += clock() - b
            predict += b - a
        out[name] = (predict / len(rest) / 1e3, learn / len(rest) / 1e3)
    fast = model._memo.numpy
    kernel = fast._layout.kernel
    weight = model.model_.embedding.weight
    table = fast._table_view(weight)
    rows = fast._kernel_row_state(model, weight, kernel)
    x, y = events[0]
    model.predict_proba_one(x)
    n = len(fast.entry.ids)
    kernel.load(fast.entry.ids, fast.entry.vals)
    saved = (kernel.ws.copy(), table.copy(), rows.copy())
    clock = time.thread_time_ns
    a = clock()
    for _ in range(n_calls):
        kernel.forward(table, kernel.ws, kernel.plan, n)
    b = clock()
    for _ in range(n_calls):  # the same event over and over (the state moves; the cost does not)
        kernel.learn(table, rows, kernel.ws, kernel.plan, n, 0.0, False, 1.0, 1.0, 0.02, 1e-10, 0.0, 0.0)
    c = clock()
    kernel.ws[:], table[:], rows[:] = saved
    out["kernel"] = ((b - a) / n_calls / 1e3, (c - b) / n_calls / 1e3, int(kernel.plan[_kernel_params_slot()]), n)
    return out


def _kernel_params_slot() -> int:
    from river_torchrec import _kernels

    return _kernels.P_PARAMS


def kernel_table(r: dict | None) -> str:
    if r is None:
        return "\n#### Per-event CPU time split: skipped (no compiled steps: numba not installed)"
    fwd, step, n_params, n_fields = r.pop("kernel")
    rows = [[name, f"{p:.1f}", f"{l:.1f}", f"{p + l:.1f}"] for name, (p, l) in r.items()]
    return (
        f"\n#### Per-event CPU time split (µs per call, default DeepFM: {n_fields} fields, {n_params:,} dense parameters)\n\n"
        + md(["model", "predict_proba_one", "learn_one", "both"], rows)
        + f"\n\nThe compiled forward pass alone: {fwd:.1f} µs; the compiled step alone (forward, backward, "
        f"Adagrad, test, write): {step:.1f} µs."
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
    parser.add_argument("--only", default="event,many,flat,latency,kernel,start")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    if args.quick:
        args.events, args.big_rows, args.runs = 2_000, 2**14, min(args.runs, 2)
    only = set(args.only.split(","))
    warm_up()
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
    if "kernel" in only:
        print(kernel_table(kernel_split(stream, 1_000 if args.quick else 5_000)))
    if "start" in only:
        print(start_table(start_up(cold=not args.quick)))
    if args.profile:
        print(profile(stream[: min(len(stream), 20_000)]))


if __name__ == "__main__":
    main()
