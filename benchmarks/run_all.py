"""Quality and speed of river-torchrec side by side with its peers, and the speed targets.

Run ``python benchmarks/run_all.py`` (``--quick``: 1,000 events per dataset, for a smoke run). It
prints markdown tables:

1. Per dataset (``SyntheticCTR`` with 50,000 events and an abrupt drift at mid-stream, and
   the Criteo, Avazu and MovieLens-100K samples found under ``--data``): progressive
   validation (``predict_proba_one``, then ``learn_one``, on every event) of our classifier
   (the library default and DeepFM ``batch_size=32``, FM and LR), river's
   ``LogisticRegression``, ``FMClassifier`` and ``FFMClassifier``, Vowpal Wabbit (linear and
   ``-q ::``) and deep-river's ``Classifier``. Columns: events/s (median of ``--runs``),
   progressive LogLoss, exact ROC AUC (``sklearn.metrics.roc_auc_score`` on the stored
   predictions), the worker's peak RSS and our default's speed divided by each model's.
2. The speed targets (DeepFM, embedding_dim 8, hidden (64, 32), synthetic stream) with
   PASS/FAIL, the memory of an embedding row in float32 and float16, and the LogLoss
   effect of 16-bit embedding storage.

Each model runs in its own worker process (``benchmarks/peers/worker.py``) with
``torch.set_num_threads(1)``, so its peak RSS is its own; deep-river runs in its own
virtualenv (``--deep-river-python``, see ``benchmarks/README.md``) on the identical event
stream, written to a JSONL file. ``benchmarks/README.md`` documents the inputs each peer
gets and holds measured results.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from peers.models import PEER_ROWS  # noqa: E402
from peers.scores import auc, logloss  # noqa: E402

WORKER = HERE / "peers" / "worker.py"
DEEP_RIVER_RUNNER = HERE / "peers" / "deep_river_runner.py"

DATASETS = ("synthetic", "criteo", "avazu", "movielens")
SECTIONS = (*DATASETS, "targets")

DEFAULT = "river-torchrec default"
MODELS: list[tuple[str, dict]] = [
    (DEFAULT, {"kind": "ours", "params": {}}),
    ("river-torchrec DeepFM batch_size=32", {"kind": "ours", "params": {"model": "deepfm", "batch_size": 32}}),
    ("river-torchrec FM", {"kind": "ours", "params": {"model": "fm"}}),
    ("river-torchrec LR", {"kind": "ours", "params": {"model": "lr"}}),
    *PEER_ROWS,
]

#: The model of the speed targets: DeepFM, embedding_dim 8, hidden (64, 32).
TARGET_DEEPFM = {"model": "deepfm", "embedding_dim": 8, "hidden_units": [64, 32]}
#: Target (c) pins Adam at lr 1e-3, the updater of the bare PyTorch loop it is compared with.
TARGET_MANY = {**TARGET_DEEPFM, "optimizer": "adam", "lr": 1e-3}


# --------------------------------------------------------------------------- data


def load_events(name: str, data: pathlib.Path, quick: bool, seed: int) -> tuple[list | None, str]:
    """The events of a dataset and a description, or None and why it is skipped."""
    from river_torchrec import datasets

    limit = 1_000 if quick else None
    if name == "synthetic":
        n = limit or 50_000
        stream: Iterable = datasets.SyntheticCTR(n_events=n, drift="abrupt", seed=seed)
        what = f"SyntheticCTR(n_events={n:,}, drift='abrupt', seed={seed})"
    else:
        try:
            if name == "criteo":
                stream = datasets.Criteo(data / "criteo_dac_head10k.csv.gz")
            elif name == "avazu":
                stream = datasets.Avazu(data / "avazu_head10k.csv.gz")
            else:
                # The raw Unix timestamp is dropped: as a numeric feature it only grows.
                stream = (
                    ({k: v for k, v in x.items() if k != "timestamp"}, y)
                    for x, y in datasets.MovieLens100K(data)
                )
        except FileNotFoundError as e:
            return None, f"skipped: {e}"
        what = {"criteo": "Criteo DAC sample", "avazu": "Avazu sample", "movielens": "MovieLens-100K, rating >= 4"}[
            name
        ]
    events = list(itertools.islice(stream, limit))
    if limit:
        what += f", first {len(events):,} events (--quick)"
    return events, f"{what}: {len(events):,} events, {np.mean([y for _, y in events]):.1%} positive"


def write_jsonl(events: list, path: pathlib.Path) -> None:
    with open(path, "w") as f:
        for x, y in events:
            f.write(json.dumps([x, bool(y)]) + "\n")


# ------------------------------------------------------------------ measurements


def resolved(params: dict) -> dict:
    """A classifier's full parameters, so equal models share one measurement."""
    from river_torchrec import CTRClassifier

    return json.loads(json.dumps(CTRClassifier(**params)._get_params(), default=repr))


class Bench:
    """Runs jobs in worker processes, caching results by what was measured."""

    def __init__(self, args: argparse.Namespace, tmp: pathlib.Path) -> None:
        self.args = args
        self.tmp = tmp
        self.cache: dict[str, tuple[int, dict]] = {}
        self.labels: dict[pathlib.Path, np.ndarray] = {}
        self.n_jobs = 0

    def events_file(self, name: str, events: list) -> pathlib.Path:
        path = self.tmp / f"{name}.jsonl"
        if path not in self.labels:
            write_jsonl(events, path)
            self.labels[path] = np.array([float(y) for _, y in events])
        return path

    def _key(self, job: dict, events: pathlib.Path | None, device: str) -> str:
        job = dict(job)
        if job.get("mode") == "stream" and job["spec"]["kind"] == "ours":
            job["spec"] = {"kind": "ours", "params": resolved(job["spec"]["params"])}
        elif "params" in job and job.get("mode") in ("many", "latency", "memory"):
            job["params"] = resolved(job["params"])
        return json.dumps([job, str(events), device], sort_keys=True)

    def run(self, job: dict, events: pathlib.Path | None, runs: int, device: str = "cpu", label: str = "") -> dict:
        """The job's results (with ``eps``, ``logloss``, ``auc`` where it predicts), or ``{"skip": why}``."""
        key = self._key(job, events, device)
        if key in self.cache and self.cache[key][0] >= runs:
            return self.cache[key][1]
        self.n_jobs += 1
        out = self.tmp / f"job{self.n_jobs}.json"
        if job.get("spec", {}).get("kind") == "deep-river":
            python = self.args.deep_river_python
            if not python:
                return {"skip": "skipped: no --deep-river-python given"}
            cmd = [python, str(DEEP_RIVER_RUNNER), "--events", str(events), "--runs", str(runs), "--out", str(out)]
        else:
            cmd = [sys.executable, str(WORKER), "--job", json.dumps(job), "--runs", str(runs)]
            cmd += ["--device", device, "--out", str(out)]
            if events is not None:
                cmd += ["--events", str(events)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        print(f"  running {label or job} on {device} ...", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        except OSError as e:
            return {"skip": f"skipped: cannot run {cmd[0]}: {e}"}
        if proc.returncode != 0 or not out.exists():
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            return {"skip": f"skipped: worker failed: {why[:200]}"}
        result = json.loads(out.read_text())
        if "preds" in result:
            y = self.labels[events]
            p = np.asarray(result.pop("preds"), dtype=float)
            result["logloss"] = logloss(y, p)
            result["auc"] = auc(y, p)
        if "eps" in result:
            result["eps_median"] = statistics.median(result["eps"])
        self.cache[key] = (runs, result)
        return result


# ----------------------------------------------------------------------- tables


def markdown(headers: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> str:
    right = set(right)
    sep = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_eps(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if math.isfinite(x) else "—"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def quality_rows(bench: Bench, name: str, events: list, args: argparse.Namespace, cuda: bool) -> list[dict]:
    """Measure every model of :data:`MODELS` on one dataset."""
    path = bench.events_file(name, events)
    rows = []
    for label, spec in MODELS:
        r = bench.run({"mode": "stream", "spec": spec}, path, args.runs, label=f"{name}: {label}")
        if cuda and spec["kind"] == "ours":
            c = bench.run({"mode": "stream", "spec": spec}, path, args.runs, "cuda", label=f"{name}: {label} (cuda)")
            r = {**r, "cuda_eps_median": c.get("eps_median"), "cuda_skip": c.get("skip")}
        rows.append({"model": label, "spec": spec, **r})
    return rows


def quality_table(rows: list[dict], cuda: bool) -> str:
    """The markdown table of :func:`quality_rows`' results, the best LogLoss in bold."""
    default_eps = next((r.get("eps_median", float("nan")) for r in rows if r["model"] == DEFAULT), float("nan"))
    best = min((r["logloss"] for r in rows if "logloss" in r), default=None)
    headers = ["model", "events/s", "LogLoss", "ROC AUC", "peak RSS MB", "default ÷ model (speed)"]
    if cuda:
        headers.append("events/s (cuda)")
    cells = []
    for r in rows:
        if "skip" in r:
            row = [r["model"], r["skip"], "—", "—", "—", "—"]
        else:
            ll = f"{r['logloss']:.4f}"
            row = [
                r["model"],
                fmt_eps(r["eps_median"]),
                f"**{ll}**" if r["logloss"] == best else ll,
                f"{r['auc']:.4f}",
                f"{r['peak_rss_mb']:.0f}",
                fmt_ratio(default_eps / r["eps_median"]),
            ]
        if cuda:
            if r["spec"]["kind"] != "ours":
                row.append("—")
            elif r.get("cuda_eps_median") is not None:
                row.append(fmt_eps(r["cuda_eps_median"]))
            else:
                row.append(r.get("cuda_skip") or "—")
        cells.append(row)
    return markdown(headers, cells, right=range(1, len(headers)))


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def target_results(bench: Bench, args: argparse.Namespace, cuda: bool) -> dict:
    """Measure the speed targets (a)-(e)."""
    events, _ = load_events("synthetic", args.data, args.quick, args.seed)
    path = bench.events_file("synthetic", events)
    runs = args.runs
    spec = dict(MODELS)

    def stream(params: dict, runs: int = runs, events_path: pathlib.Path = path, label: str = "") -> dict:
        return bench.run({"mode": "stream", "spec": {"kind": "ours", "params": params}}, events_path, runs, label=label)

    results: dict[str, Any] = {
        "deepfm_bs1": stream({**TARGET_DEEPFM, "batch_size": 1}, label="DeepFM batch_size=1"),
        "deepfm_bs32": stream({**TARGET_DEEPFM, "batch_size": 32}, label="DeepFM batch_size=32"),
        "deep_river": bench.run({"mode": "stream", "spec": spec["deep-river Classifier (MLP)"]}, path, runs),
        "river_fm": bench.run({"mode": "stream", "spec": spec["river FMClassifier"]}, path, runs),
        "learn_many": bench.run({"mode": "many", "params": TARGET_MANY}, path, runs, label="DeepFM learn_many"),
        "bare_torch": bench.run({"mode": "bare", "params": {}}, path, runs, label="bare PyTorch DeepFM"),
        "latency": bench.run(
            {"mode": "latency", "params": TARGET_DEEPFM, "n_calls": 1_000 if args.quick else 10_000},
            path,
            runs,
            label="predict_proba_one latency",
        ),
    }
    if cuda:
        job = {"mode": "many", "params": TARGET_MANY}
        results["learn_many_cuda"] = bench.run(job, path, runs, "cuda", label="learn_many (cuda)")

    n_ids = 2**14 if args.quick else 10**6
    results["memory"] = {
        dtype: bench.run(
            {"mode": "memory", "params": {**TARGET_DEEPFM, "embedding_dtype": dtype}, "n_ids": n_ids},
            None,
            1,
            label=f"memory {dtype}",
        )
        for dtype in ("float32", "float16")
    }

    # Quality only: one run each.
    lls: dict[str, dict] = {}
    for name in ("synthetic", "criteo"):
        ev, what = (events, "") if name == "synthetic" else load_events(name, args.data, args.quick, args.seed)
        if ev is None:
            lls[name] = {"skip": what}
            continue
        p = bench.events_file(name, ev)
        lls[name] = {
            dtype: stream(
                {**TARGET_DEEPFM, "batch_size": 1, "embedding_dtype": dtype}, 1, p, label=f"{name}: DeepFM {dtype}"
            ).get("logloss")
            for dtype in ("float32", "float16", "bfloat16")
        }
    results["logloss_by_dtype"] = lls
    return results


def targets_tables(results: dict) -> str:
    """The markdown tables of :func:`target_results`, with PASS/FAIL per target."""

    def eps(r: dict) -> float:
        return r.get("eps_median", float("nan"))

    def ratio_row(what: str, ours: dict, peer: dict, target: float) -> list[str]:
        if "skip" in peer or "skip" in ours:
            return [what, (peer.get("skip") or ours.get("skip")), f">= {target:g}x", "n/a"]
        x = eps(ours) / eps(peer)
        measured = f"{fmt_eps(eps(ours))} vs {fmt_eps(eps(peer))} events/s = {x:.2f}x"
        return [what, measured, f">= {target:g}x", verdict(x >= target)]

    def eps_row(what: str, r: dict, target: float) -> list[str]:
        if "skip" in r:
            return [what, r["skip"], f">= {target:,.0f} events/s", "n/a"]
        return [what, f"{fmt_eps(eps(r))} events/s", f">= {target:,.0f} events/s", verdict(eps(r) >= target)]

    one, many, bare, lat = results["deepfm_bs1"], results["learn_many"], results["bare_torch"], results["latency"]
    rows = [
        ratio_row("(a) batch_size=1 learn_one+predict_proba_one vs deep-river Classifier", one, results["deep_river"], 10),
        ratio_row("(a) batch_size=1 learn_one+predict_proba_one vs river FMClassifier", one, results["river_fm"], 1),
        eps_row("(b) batch_size=32 learn_one+predict_proba_one", results["deepfm_bs32"], 10_000),
        eps_row("(c) learn_many+predict_proba_many, 1,024-event frames, Adam", many, 100_000),
    ]
    if "learn_many_cuda" in results:
        rows.append(eps_row("(c) learn_many+predict_proba_many on cuda", results["learn_many_cuda"], 100_000))
    what = "(c) bare PyTorch loop ÷ learn_many"
    if "skip" in many or "skip" in bare:
        rows.append([what, bare.get("skip") or many.get("skip"), "<= 2x", "n/a"])
    else:
        x = eps(bare) / eps(many)
        rows.append([what, f"{fmt_eps(eps(bare))} vs {fmt_eps(eps(many))} events/s = {x:.2f}x", "<= 2x", verdict(x <= 2)])
    if "skip" in lat:
        rows.append(["(d) predict_proba_one latency, warm model", lat["skip"], "p99 < 1 ms", "n/a"])
    else:
        p50, p99 = statistics.median(lat["p50_us"]), statistics.median(lat["p99_us"])
        rows.append(
            [
                f"(d) predict_proba_one latency, warm model ({lat['n_calls']:,} calls)",
                f"p50 {p50:.0f} µs, p99 {p99:.0f} µs",
                "p99 < 1 ms",
                verdict(p99 < 1_000),
            ]
        )
    out = ["### Speed targets (DeepFM, embedding_dim 8, hidden (64, 32), synthetic stream)", ""]
    out.append(markdown(["target", "measured (median of runs)", "target", "result"], rows))

    mem_rows, n_ids = [], None
    for dtype, r in results["memory"].items():
        if "skip" in r:
            mem_rows.append([dtype, r["skip"], "—", "—", "—", "—"])
            continue
        n_ids = r["n_ids"]
        raw = 4 * r["dim"]
        measured = r["rss_delta_bytes"] / r["n_ids"]
        mem_rows.append(
            [
                dtype,
                f"{r['element_size'] * r['dim']}",
                f"{raw}",
                f"{measured:.1f}",
                f"{measured / raw:.2f}x",
                f"{r['new_rows']:,} rows, capacity {r['capacity']:,}",
            ]
        )
    headers = [
        "embedding_dtype",
        "weight bytes/row",
        "raw float32 bytes/row",
        "measured bytes/row (RSS delta / ids)",
        "measured ÷ raw float32",
        "table",
    ]
    ids = f"{n_ids:,} distinct ids" if n_ids else "distinct ids"
    out += [
        "",
        f"### (e) Memory per embedding row: {ids} learned by learn_many in 1,024-event frames (no target)",
        "",
        markdown(headers, mem_rows, right=range(1, 5)),
    ]

    ll_rows = []
    for name, lls in results["logloss_by_dtype"].items():
        if "skip" in lls:
            ll_rows.append([name, lls["skip"], "—", "—"])
            continue
        base = lls.get("float32")
        row = [name, f"{base:.4f}" if base is not None else "—"]
        for dtype in ("float16", "bfloat16"):
            ll = lls.get(dtype)
            row.append(f"{ll:.4f} ({ll - base:+.4f})" if ll is not None and base is not None else "—")
        ll_rows.append(row)
    out += [
        "",
        "### (e) Progressive LogLoss with 16-bit embedding storage (DeepFM, batch_size=1; no target)",
        "",
        markdown(["dataset", "float32", "float16 (Δ)", "bfloat16 (Δ)"], ll_rows, right=(1, 2, 3)),
    ]
    return "\n".join(out)


# -------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    import river
    import torch

    cpu = "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import vowpalwabbit

        vw = vowpalwabbit.__version__
    except ImportError:
        vw = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "river": river.__version__,
        "vowpalwabbit": vw,
    }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 events per dataset, small targets")
    ap.add_argument("--data", type=pathlib.Path, default=REPO.parent / "shared" / "data",
                    help="folder of the real samples (absent files are skipped)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per model; the median is reported")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda adds a CUDA events/s column for our models when CUDA is available")
    ap.add_argument("--deep-river-python", help="python of a virtualenv with deep-river (see benchmarks/README.md)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--seed", type=int, default=42, help="seed of the synthetic stream")
    ap.add_argument("--out", type=pathlib.Path, help="also write all results as JSON here")
    ap.add_argument("--from-json", type=pathlib.Path, help="print the tables of an earlier --out file; measure nothing")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    return args


def print_header(meta: dict) -> None:
    print("## river-torchrec vs peers\n")
    print(
        f"{meta['date']}; {meta['nproc']} CPUs ({meta['cpu']}); python {meta['python']}, torch {meta['torch']}, "
        f"river {meta['river']}, vowpalwabbit {meta['vowpalwabbit']}; runs per timing: {meta.get('runs', '?')}\n"
    )
    print(f"`{meta['command']}`\n")
    print(f"Load before: `{meta['uptime_before']}`\n")
    if meta.get("device") == "cuda" and not meta.get("cuda"):
        print("_--device cuda: torch.cuda.is_available() is False, so there is no CUDA column._\n")


def print_results(results: dict) -> None:
    """Print every table of a run (or of a ``--out`` file, with ``--from-json``)."""
    meta = results["meta"]
    print_header(meta)
    for name, d in results["datasets"].items():
        if "skip" in d:
            print(f"### {name}: {d['skip']}\n")
        else:
            print(f"### {name}: {d['description']}\n")
            print(quality_table(d["rows"], bool(meta.get("cuda"))) + "\n")
    if "targets" in results:
        print(targets_tables(results["targets"]) + "\n")
    print(f"Load after: `{meta.get('uptime_after', 'unknown')}`")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_json:
        print_results(json.loads(args.from_json.read_text()))
        return
    meta = machine()
    meta["command"] = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", "run_all.py", *argv])
    meta["uptime_before"] = uptime()
    meta["runs"] = args.runs
    meta["device"] = args.device
    meta["cuda"] = args.device == "cuda" and cuda_available()
    print_header(meta)
    results: dict[str, Any] = {"meta": meta, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="rtr-bench-") as tmp:
        bench = Bench(args, pathlib.Path(tmp))
        for name in DATASETS:
            if name not in args.only:
                continue
            events, what = load_events(name, args.data, args.quick, args.seed)
            if events is None:
                results["datasets"][name] = {"skip": what}
                print(f"### {name}: {what}\n", flush=True)
                continue
            rows = quality_rows(bench, name, events, args, meta["cuda"])
            results["datasets"][name] = {"description": what, "rows": rows}
            print(f"### {name}: {what}\n\n{quality_table(rows, meta['cuda'])}\n", flush=True)
        if "targets" in args.only:
            results["targets"] = target_results(bench, args, meta["cuda"])
            print(targets_tables(results["targets"]) + "\n")
    meta["uptime_after"] = uptime()
    print(f"Load after: `{meta['uptime_after']}`")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
