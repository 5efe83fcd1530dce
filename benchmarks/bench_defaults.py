"""Defaults that never lose: every stream x every peer, AutoCTRClassifier() and the old default.

``python benchmarks/bench_defaults.py`` (``--quick``: 1,000 events per stream, a smoke run)
prints markdown tables of progressive validation (``predict_proba_one`` then ``learn_one``
on every event, in file order):

1. Quality: for every stream (the synthetic stream of ``run_all.py``, the Criteo, Avazu and
   MovieLens-100K samples under ``--data``, the sparse low-rate ``SparseCTR`` log without
   and with planted signal, the 12 x 12 ``RepeatVisits`` stream and the ``river-torchrec``
   demo stream) and every model (``AutoCTRClassifier()``, the old default
   ``CTRClassifier()``, the running click rate, river's LR / FM / FFM, Vowpal Wabbit linear
   and ``-q ::``, deep-river with ``--deep-river-python``): LogLoss, exact ROC AUC
   (``sklearn.metrics.roc_auc_score`` on the stored predictions) and LogLoss minus the
   running prior's.
2. The targets of issue 16 with PASS/FAIL: the new default against the best peer of each
   real and synthetic stream, against the prior on the sparse logs, against the best fixed
   Adagrad learning rate of FM and DeepFM on the repeat-visit stream (LogLoss of the last
   3,000 events), the share of the distance from river LR to the oracle closed on the demo
   stream, and the per-event speed of the new default against the old one (median over
   ``--runs`` interleaved rounds on the synthetic stream of the ratio within each round, on
   the thread's CPU time, which the load of a shared machine does not inflate; the wall
   clock is printed next to it).

Peers are built by ``benchmarks/peers/models.py`` exactly as ``run_all.py`` builds them
(same inputs, same defaults); deep-river runs in its own virtualenv through
``benchmarks/peers/deep_river_runner.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import itertools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from peers.models import PEER_ROWS, RiverStep, build  # noqa: E402
from peers.scores import auc, logloss  # noqa: E402

STREAMS = ("synthetic", "criteo", "avazu", "movielens", "sparse", "sparse-signal", "repeat", "demo")

NEW = "AutoCTRClassifier()"
OLD = "CTRClassifier() (old default)"
PRIOR = "running prior"
PEERS: list[tuple[str, dict]] = [
    (NEW, {"kind": "auto"}),
    (OLD, {"kind": "ours", "params": {}}),
    (PRIOR, {"kind": "prior"}),
    *PEER_ROWS,
]
#: The fixed learning rates of the repeat-visit reference rows (Adagrad, FM and DeepFM).
FIXED_LRS = (0.02, 0.05, 0.1, 0.2, 0.3)
REPEAT_TAIL = 3_000  # the repeat-visit target is read on the last events, as in the issue
DEMO_RIVER_LR = "river LogisticRegression (demo CLI input)"
AUTO_FM = 'AutoCTRClassifier(model="fm")'
#: The old default as it ran when issue 16 was filed: the NumPy twin, no compiled kernels.
TWIN = "CTRClassifier() (old default), NumPy path"


# --------------------------------------------------------------------------- streams


@functools.lru_cache(maxsize=None)
def load_stream(name: str, data: str, quick: bool) -> tuple[tuple, str, float | None]:
    """``(events, description, oracle LogLoss or None)``; ``events`` is empty when the file is absent."""
    from river_torchrec import datasets

    limit = 1_000 if quick else None
    oracle = None
    path = pathlib.Path(data)
    try:
        if name == "synthetic":
            ds = datasets.SyntheticCTR(n_events=limit or 50_000, drift="abrupt", seed=42)
            what, stream = f"SyntheticCTR(n_events={ds.n_events:,}, drift='abrupt', seed=42)", ds
        elif name == "demo":
            ds = datasets.SyntheticCTR(n_events=limit or 20_000, drift="abrupt", seed=42)
            what, stream = f"river-torchrec demo: SyntheticCTR(n_events={ds.n_events:,}, drift='abrupt', seed=42)", ds
            triples = list(ds.iter_with_proba())
            y = np.array([float(t) for _, t, _ in triples])
            oracle = logloss(y, np.array([p for _, _, p in triples]))
        elif name in ("sparse", "sparse-signal"):
            signal = 1.0 if name == "sparse-signal" else 0.0
            ds = datasets.SparseCTR(n_events=limit or 10_000, signal=signal, seed=42)
            what, stream = f"SparseCTR(n_events={ds.n_events:,}, signal={signal:g}, seed=42)", ds
            oracle = ds.bayes_logloss()
        elif name == "repeat":
            ds = datasets.RepeatVisits(n_events=limit or 12_000, seed=42)
            what, stream = f"RepeatVisits(12 users x 12 items, n_events={ds.n_events:,}, seed=42)", ds
            oracle = ds.bayes_logloss()
        elif name == "criteo":
            what, stream = "Criteo DAC sample", datasets.Criteo(path / "criteo_dac_head10k.csv.gz")
        elif name == "avazu":
            what, stream = "Avazu sample", datasets.Avazu(path / "avazu_head10k.csv.gz")
        elif name == "movielens":
            what = "MovieLens-100K, rating >= 4 (timestamp dropped)"
            # As run_all.py: the raw Unix timestamp only grows, so it is dropped.
            stream = (({k: v for k, v in x.items() if k != "timestamp"}, y) for x, y in datasets.MovieLens100K(path))
        else:
            raise ValueError(f"unknown stream {name!r}")
        events = tuple(itertools.islice(stream, limit))
    except FileNotFoundError as e:
        return (), f"skipped: {e}", None
    rate = np.mean([float(y) for _, y in events])
    return events, f"{what}: {len(events):,} events, {rate:.2%} positive", oracle


# --------------------------------------------------------------------------- models


def make_learner(spec: dict):
    kind = spec["kind"]
    if kind == "auto":
        from river_torchrec.auto import AutoCTRClassifier

        return RiverStep(AutoCTRClassifier(**spec.get("params", {})))
    if kind == "prior":
        from river_torchrec.mixture import RunningPrior

        return RiverStep(RunningPrior())
    if kind == "cli-river-lr":
        # The demo's own river LR (one-hot + standard scaling), as `river-torchrec` prints it.
        from river_torchrec.cli import _river_peer

        return RiverStep(_river_peer("river-lr", 42))
    return build(spec)


def run_job(job: tuple[str, str, dict, str, bool]) -> dict:
    """Progressive validation of one model on one stream, in a worker process."""
    stream, label, spec, data, quick = job
    import torch

    torch.set_num_threads(1)
    events, _, _ = load_stream(stream, data, quick)
    learner = make_learner(spec)
    step = learner.step
    preds = np.empty(len(events))
    start = time.perf_counter()
    for i, (x, y) in enumerate(events):
        preds[i] = step(x, y)
    seconds = time.perf_counter() - start
    return {"stream": stream, "model": label, "preds": preds.tolist(), "seconds": seconds}


def run_deep_river(stream: str, args: argparse.Namespace, tmp: pathlib.Path) -> dict:
    if not args.deep_river_python:
        return {"skip": "skipped: deep-river is not installed here (give --deep-river-python)"}
    events, _, _ = load_stream(stream, str(args.data), args.quick)
    path, out = tmp / f"{stream}.jsonl", tmp / f"{stream}-dr.json"
    with open(path, "w") as f:
        for x, y in events:
            f.write(json.dumps([x, bool(y)]) + "\n")
    cmd = [args.deep_river_python, str(HERE / "peers" / "deep_river_runner.py"), "--events", str(path)]
    proc = subprocess.run([*cmd, "--runs", "1", "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return {"skip": f"skipped: deep-river failed: {lines[-1][:200]}"}
    return {"preds": json.loads(out.read_text())["preds"]}


@contextlib.contextmanager
def _kernels_off(off: bool):
    """``RIVER_TORCHREC_NO_KERNEL=1`` while a model is built and run (its one-event steps then
    take the NumPy twin), restored afterwards."""
    if not off:
        yield
        return
    before = os.environ.get("RIVER_TORCHREC_NO_KERNEL")
    os.environ["RIVER_TORCHREC_NO_KERNEL"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RIVER_TORCHREC_NO_KERNEL"]
        else:
            os.environ["RIVER_TORCHREC_NO_KERNEL"] = before


def speed(runs: int, quick: bool, data: str) -> dict:
    """µs per event of the old and new default on the synthetic stream, interleaved runs."""
    import torch

    torch.set_num_threads(1)
    events, _, _ = load_stream("synthetic", data, quick)
    events = events[: 1_000 if quick else 20_000]
    specs = (
        (OLD, {"kind": "ours", "params": {}}),
        (NEW, {"kind": "auto"}),
        (AUTO_FM, {"kind": "auto", "params": {"model": "fm"}}),
        (TWIN, {"kind": "ours", "params": {}}),
    )
    out: dict[str, list[float]] = {label: [] for label, _ in specs}
    cpu: dict[str, list[float]] = {label: [] for label, _ in specs}
    for label, spec in specs:
        # Untimed: compiled kernels (numba) are compiled or loaded from disk on first use.
        with _kernels_off(label == TWIN):
            step = make_learner(spec).step
            for x, y in events[:200]:
                step(x, y)
    for _ in range(runs):
        for label, spec in specs:
            with _kernels_off(label == TWIN):
                step = make_learner(spec).step
                start, start_cpu = time.perf_counter(), time.thread_time()
                for x, y in events:
                    step(x, y)
            # The thread's CPU time as well as the wall clock: on a loaded shared machine the
            # wall clock of a round also counts the time other processes held the core.
            cpu[label].append((time.thread_time() - start_cpu) / len(events) * 1e6)
            out[label].append((time.perf_counter() - start) / len(events) * 1e6)
    return {"us_per_event": out, "cpu_us_per_event": cpu, "n_events": len(events)}


# --------------------------------------------------------------------------- tables


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    sep = ["---"] + ["---:"] * (len(headers) - 1)
    return "\n".join(["| " + " | ".join(r) + " |" for r in (headers, sep, *rows)])


def scores(y: np.ndarray, p: np.ndarray) -> dict:
    return {
        "logloss": logloss(y, p),
        "auc": auc(y, p),
        "tail_logloss": logloss(y[-REPEAT_TAIL:], p[-REPEAT_TAIL:]),
    }


def quality_table(stream: str, rows: dict[str, dict]) -> str:
    prior = rows[PRIOR]["logloss"]
    tail = stream == "repeat"
    best = min(r["logloss"] for r in rows.values() if "logloss" in r)
    headers = ["model", "LogLoss", "ROC AUC", "LogLoss − prior's"]
    if tail:
        headers.append(f"LogLoss, last {REPEAT_TAIL:,}")
    cells = []
    for label, r in rows.items():
        if "skip" in r:
            cells.append([label, r["skip"], "—", "—"] + (["—"] if tail else []))
            continue
        ll = f"{r['logloss']:.4f}"
        row = [label, f"**{ll}**" if r["logloss"] == best else ll, f"{r['auc']:.4f}", f"{r['logloss'] - prior:+.4f}"]
        if tail:
            row.append(f"{r['tail_logloss']:.4f}")
        cells.append(row)
    return markdown(headers, cells)


def round_ratio(us: dict[str, list[float]], label: str) -> float:
    """Median over rounds of the model's µs/event divided by the old default's in the same
    round: the two ran minutes apart at most, so a change of machine load cancels out."""
    return statistics.median(a / b for a, b in zip(us[label], us[OLD]))


def speed_clock(speed_result: dict) -> tuple[str, dict[str, list[float]]]:
    """The clock the speed target is read on: the thread's CPU time when measured (a loaded
    machine inflates the wall clock by whatever else runs), else the wall clock."""
    cpu = speed_result.get("cpu_us_per_event")
    return ("CPU", cpu) if cpu else ("wall-clock", speed_result["us_per_event"])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(results: dict, oracles: dict, speed_result: dict | None) -> str:
    rows = []
    for stream in ("synthetic", "criteo", "avazu", "movielens"):
        r = results.get(stream)
        if not r:
            continue
        peers = {k: v for k, v in r.items() if k not in (NEW, OLD) and "logloss" in v and k in dict(PEERS)}
        best_label = min(peers, key=lambda k: peers[k]["logloss"])
        new, best = r[NEW]["logloss"], peers[best_label]["logloss"]
        rows.append([f"{stream}: <= best peer", f"{new:.4f} vs {best:.4f} ({best_label}), {new - best:+.4f}",
                     verdict(new <= best)])
    for stream in ("sparse", "sparse-signal"):
        r = results.get(stream)
        if not r:
            continue
        new, prior = r[NEW]["logloss"], r[PRIOR]["logloss"]
        measured = f"{new:.4f} vs {prior:.4f}, {new - prior:+.4f}"
        if stream == "sparse":
            rows.append(["sparse, no signal: <= prior", measured, verdict(new <= prior)])
        else:
            rows.append(["sparse, planted signal: < prior", measured, verdict(new < prior)])
    r = results.get("repeat")
    if r:
        new = r[NEW]["tail_logloss"]
        for model in ("FM", "DeepFM"):
            fixed = {k: v["tail_logloss"] for k, v in r.items() if k.startswith(f"{model} lr=")}
            k = min(fixed, key=fixed.get)
            rows.append([f"repeat, last {REPEAT_TAIL:,}: within 0.01 of best fixed lr, {model}",
                         f"{new:.4f} vs {fixed[k]:.4f} ({k}), {new - fixed[k]:+.4f}", verdict(new <= fixed[k] + 0.01)])
    r = results.get("demo")
    if r and oracles.get("demo") is not None and DEMO_RIVER_LR in r:
        lr, oracle = r[DEMO_RIVER_LR]["logloss"], oracles["demo"]
        for label in (NEW, OLD):
            closed = (lr - r[label]["logloss"]) / (lr - oracle)
            rows.append([f"demo: close >= 1/3 of river LR → oracle, {label}",
                         f"{r[label]['logloss']:.4f}; river LR {lr:.4f}, oracle {oracle:.4f}: {closed:.1%} closed",
                         verdict(closed >= 1 / 3)])
    worst = max(
        ((s, r[NEW]["logloss"] - r[PRIOR]["logloss"]) for s, r in results.items() if NEW in r and PRIOR in r),
        key=lambda t: t[1], default=None,
    )
    if worst:
        rows.append(["nowhere more than 0.001 worse than the prior",
                     f"worst: {worst[0]}, {worst[1]:+.4f}", verdict(worst[1] <= 0.001)])
    if speed_result:
        clock, us = speed_clock(speed_result)
        wall = speed_result["us_per_event"]
        for label in (NEW, AUTO_FM):
            if not us.get(label):
                continue
            ratio = round_ratio(us, label)
            what = label
            rows.append([f"speed: {what} <= 1.3x old (median over {len(us[label])} rounds of its ÷ old in the round, "
                         f"{clock} time)",
                         f"{statistics.median(us[label]):.0f} vs {statistics.median(us[OLD]):.0f} µs, {ratio:.2f}x "
                         f"(wall clock {round_ratio(wall, label):.2f}x)",
                         verdict(ratio <= 1.3)])
        if us.get(TWIN) and us.get(NEW):
            vs_twin = statistics.median(a / b for a, b in zip(us[NEW], us[TWIN]))
            rows.append([f"speed (reported): {NEW} ÷ the old default on the NumPy path, as when the issue "
                         f"was filed ({clock} time)", f"{vs_twin:.2f}x", "—"])
    return markdown(["target", "measured", "result"], rows)


# --------------------------------------------------------------------------- main


def jobs_for(stream: str, args: argparse.Namespace) -> list[tuple]:
    data, quick = str(args.data), args.quick
    out = [(stream, label, spec, data, quick) for label, spec in PEERS if spec["kind"] != "deep-river"]
    if stream == "repeat":
        for lr in FIXED_LRS:
            for name, model in (("FM", "fm"), ("DeepFM", "deepfm")):
                spec = {"kind": "ours", "params": {"model": model, "lr": lr}}
                out.append((stream, f"{name} lr={lr:g}", spec, data, quick))
    if stream == "demo":
        out.append((stream, DEMO_RIVER_LR, {"kind": "cli-river-lr"}, data, quick))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=pathlib.Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--quick", action="store_true", help="1,000 events per stream")
    ap.add_argument("--only", default=",".join(STREAMS), help=f"comma-separated subset of {','.join(STREAMS)}")
    ap.add_argument("--runs", type=int, default=3, help="interleaved speed runs (median reported); 0 skips speed")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes for the quality runs")
    ap.add_argument("--deep-river-python", default=None)
    ap.add_argument("--out", type=pathlib.Path, default=None, help="write all predictions' scores as JSON")
    ap.add_argument("--speed-only", action="store_true", help="only the interleaved speed runs")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    streams = [] if args.speed_only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(streams) - set(STREAMS))
    if unknown:
        ap.error(f"unknown streams {unknown}; choose from {','.join(STREAMS)}")

    print(f"# bench_defaults.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs{' (--quick)' if args.quick else ''}\n")
    described, oracles, jobs = {}, {}, []
    for stream in streams:
        events, what, oracle = load_stream(stream, str(args.data), args.quick)
        described[stream], oracles[stream] = what, oracle
        if events:
            jobs += jobs_for(stream, args)
    done: dict[tuple[str, str], dict] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(run_job, jobs):
            done[r["stream"], r["model"]] = r
            print(f"  {r['stream']}: {r['model']} ({r['seconds']:.1f} s)", file=sys.stderr, flush=True)

    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stream in streams:
            events, _, _ = load_stream(stream, str(args.data), args.quick)
            print(f"### {stream}: {described[stream]}\n")
            if not events:
                print("(skipped)\n")
                continue
            y = np.array([float(t) for _, t in events])
            rows: dict[str, dict] = {}
            for _, label, _, _, _ in jobs_for(stream, args):
                rows[label] = scores(y, np.asarray(done[stream, label]["preds"]))
            dr = run_deep_river(stream, args, pathlib.Path(tmp))
            rows["deep-river Classifier (MLP)"] = dr if "skip" in dr else scores(y, np.asarray(dr["preds"]))
            results[stream] = rows
            if oracles[stream] is not None:
                print(f"Oracle (the generator's true probabilities) LogLoss: {oracles[stream]:.4f}\n")
            print(quality_table(stream, rows) + "\n")

    speed_result = speed(args.runs, args.quick, str(args.data)) if args.runs > 0 else None
    if speed_result:
        us, cpu = speed_result["us_per_event"], speed_result.get("cpu_us_per_event") or {}
        print(f"### Speed: predict_proba_one + learn_one, first {speed_result['n_events']:,} synthetic events\n")
        rows = []
        for k, v in us.items():
            c = cpu.get(k)
            rows.append([k, f"{statistics.median(c):.1f}" if c else "—", ", ".join(f"{t:.1f}" for t in c or ()),
                         f"{round_ratio(cpu, k):.2f}x" if c else "—", f"{statistics.median(v):.1f}",
                         f"{round_ratio(us, k):.2f}x"])
        print(markdown(["model", "CPU µs/event (median)", "rounds (CPU µs/event)", "÷ old default (CPU, median of rounds)",
                        "wall µs/event (median)", "÷ old default (wall)"], rows) + "\n")
    print("### Targets (issue 16)\n")
    print(targets(results, oracles, speed_result) + "\n")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "oracles": oracles, "speed": speed_result,
                                        "streams": described}, indent=1, default=float))


if __name__ == "__main__":
    main()
