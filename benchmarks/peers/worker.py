"""Run one benchmark job in this process and write its results as JSON.

``python benchmarks/peers/worker.py --job JSON --events FILE --runs R --out FILE``

The parent (``run_all.py``) starts one worker per model and dataset, so ``peak_rss_mb``
(the ``VmHWM`` high-water mark of this process, see :func:`peak_rss_mb`) is the model's
own: the interpreter, the libraries it imports, the event list read from ``--events`` and
the model, with nothing subtracted.
Jobs (``"mode"``):

* ``stream``: progressive validation of a model of :mod:`peers.models` (``"spec"``), one
  event at a time, ``runs`` times with a fresh model each time;
* ``many``: ``predict_proba_many`` then ``learn_many`` on 1,024-event DataFrames;
* ``bare``: the hand-written PyTorch loop of :mod:`peers.bare_torch`, same batches;
* ``latency``: ``predict_proba_one`` latencies of a warm model;
* ``memory``: RSS growth per embedding row when ``n_ids`` distinct ids are learned.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

FRAME = 1024


def peak_rss_mb() -> float:
    """Peak resident set of this process's own address space, in MiB.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` would be the natural measure, but Linux carries
    the parent's peak into it across ``fork`` and ``execve``, so every worker would report
    at least the parent's size. ``VmHWM`` in ``/proc/self/status`` is the same high-water
    mark counted from this process's ``execve``; ``ru_maxrss`` is the fallback elsewhere.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss() -> int:
    """Resident bytes now, after a collection and handing freed heap back to the OS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_events(path: str) -> list[tuple[dict, bool]]:
    with open(path) as f:
        return [(x, bool(y)) for x, y in map(json.loads, f)]


def use_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def stream(job: dict, events: list, runs: int, device: str) -> dict:
    from peers.models import build

    if job["spec"]["kind"] == "ours":
        use_one_thread()
    eps, preds = [], None
    for _ in range(runs):
        learner = build(job["spec"], device=device)
        step = learner.step
        out = []
        start = time.perf_counter()
        for x, y in events:
            out.append(step(x, y))
        sync(device)
        eps.append(len(events) / (time.perf_counter() - start))
        preds = preds or out
        del learner
        gc.collect()
    return {"eps": eps, "preds": preds}


def frames(events: list) -> list:
    import pandas as pd

    out = []
    for lo in range(0, len(events), FRAME):
        chunk = events[lo : lo + FRAME]
        out.append((pd.DataFrame.from_records([x for x, _ in chunk]), pd.Series([y for _, y in chunk])))
    return out


def many(job: dict, events: list, runs: int, device: str) -> dict:
    use_one_thread()
    from river_torchrec import CTRClassifier

    batches = frames(events)
    eps, preds = [], None
    for _ in range(runs):
        model = CTRClassifier(**{"device": device, **job["params"]})
        out = []
        start = time.perf_counter()
        for X, y in batches:
            out.extend(model.predict_proba_many(X)[True].tolist())
            model.learn_many(X, y)
        sync(device)
        eps.append(len(events) / (time.perf_counter() - start))
        preds = preds or out
    return {"eps": eps, "preds": preds}


def bare(job: dict, events: list, runs: int, device: str) -> dict:
    use_one_thread()
    from peers import bare_torch

    ids, vals, y, n_rows = bare_torch.encode(events)
    ids, vals, y = ids.to(device), vals.to(device), y.to(device)
    eps, preds = [], None
    for _ in range(runs):
        seconds, out = bare_torch.run(ids, vals, y, n_rows, batch_size=FRAME, **job.get("params", {}))
        eps.append(len(events) / seconds)
        preds = preds or out
    return {"eps": eps, "preds": preds}


def warm_model(params: dict, events: list):
    """A ``CTRClassifier(**params)`` that has learned ``events`` in 1,024-event frames."""
    from river_torchrec import CTRClassifier

    model = CTRClassifier(**params)
    for X, y in frames(events):
        model.learn_many(X, y)
    return model


def time_predictions(model, events: list, runs: int, n_calls: int) -> dict:
    """p50 and p99 of ``predict_proba_one`` in µs, per run, over ``n_calls`` calls cycling
    through the events (200 calls first to warm caches)."""
    import numpy as np

    calls = [x for x, _ in events]
    calls = (calls * (n_calls // len(calls) + 1))[:n_calls]
    for x in calls[:200]:
        model.predict_proba_one(x)
    p50, p99 = [], []
    clock = time.perf_counter_ns
    for _ in range(runs):
        ns = np.empty(n_calls)
        for i, x in enumerate(calls):
            t = clock()
            model.predict_proba_one(x)
            ns[i] = clock() - t
        p50.append(float(np.percentile(ns, 50)) / 1e3)
        p99.append(float(np.percentile(ns, 99)) / 1e3)
    return {"p50_us": p50, "p99_us": p99, "n_calls": n_calls}


def latency(job: dict, events: list, runs: int, device: str) -> dict:
    use_one_thread()
    model = warm_model({"device": device, **job["params"]}, events)
    return time_predictions(model, events, runs, job["n_calls"])


def memory(job: dict, runs: int, device: str) -> dict:
    use_one_thread()
    import pandas as pd

    from river_torchrec import CTRClassifier

    n_ids = job["n_ids"]
    model = CTRClassifier(**{"device": device, **job["params"]})
    # A first step allocates the MLP, the updater's dense state and torch's lazy caches.
    model.learn_many(pd.DataFrame({"id": ["warm-up"] * 4}), pd.Series([True, False] * 2))
    before = current_rss()
    rows_before = len(model.model_.embedding)
    for lo in range(0, n_ids, FRAME):
        hi = min(lo + FRAME, n_ids)
        X = pd.DataFrame({"id": [f"id{i}" for i in range(lo, hi)]})
        model.learn_many(X, pd.Series([i % 2 == 0 for i in range(lo, hi)]))
        del X
    after = current_rss()
    table = model.model_.embedding
    return {
        "n_ids": n_ids,
        "new_rows": len(table) - rows_before,
        "capacity": table.capacity,
        "dim": table.dim,
        "element_size": table.weight.element_size(),
        "rss_delta_bytes": after - before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True, help="the job, as JSON")
    ap.add_argument("--events", help="JSONL file of [x, y] events")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    job = json.loads(args.job)
    mode = job["mode"]
    if mode == "memory":
        result = memory(job, args.runs, args.device)
    else:
        events = load_events(args.events)
        run = {"stream": stream, "many": many, "bare": bare, "latency": latency}[mode]
        result = run(job, events, args.runs, args.device)
    result["peak_rss_mb"] = peak_rss_mb()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pathlib.Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
