"""Serving while learning: prediction throughput of reader threads while one thread learns.

Run ``python benchmarks/bench_serving.py`` (``--quick`` for a smoke run). The model is the
default ``CTRClassifier`` (DeepFM, the default defence), warmed on 5,000 ``SyntheticCTR``
events, one torch thread. Reader threads call ``predict_proba_one`` round-robin on 500
events (a serving process answering requests); one learner thread calls ``learn_one``
as fast as it can on a stream of new events. For 1, 2 and 4 readers, the table gives the
total predictions/s with and without the learner, and the learner's events/s, medians of
``--repeats`` interleaved windows of ``--seconds`` each. Mechanisms:

* **lock** (what ``CTRClassifier`` does): one re-entrant lock over learning, prediction
  and saving; a prediction sees the weights before or after a step, never between;
* **snapshot every K**: readers predict, without a lock, from a deep copy of the model
  that the learner refreshes every K events (predictions lag by up to K events, and each
  copy costs the whole model);
* **no lock (unsafe)**: readers call the model without any lock: what the lock costs
  (torn reads possible; shown for reference only).

Python threads share one interpreter lock (the GIL), and a one-event step or prediction is
mostly Python and small NumPy calls that hold it, so extra readers cannot add throughput
on any number of cores; the table shows how the total is shared.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import threading
import time
import warnings

import torch

from river_torchrec import CTRClassifier, datasets

SNAPSHOT_EVERY = 200


def build(n_warm: int, n_stream: int = 20_000) -> tuple[CTRClassifier, list, list]:
    events = list(datasets.SyntheticCTR(n_events=n_warm + n_stream, seed=42))
    model = CTRClassifier(seed=1)
    for x, y in events[:n_warm]:
        model.learn_one(x, y)
    requests = [x for x, _ in events[n_warm - 500 : n_warm]]
    return model, requests, events[n_warm:]


def measure(
    model, requests, stream, n_readers: int, learning: bool, mechanism: str, seconds: float
) -> tuple[float, float, float]:
    """(predictions/s over all readers, learned events/s, predictions per CPU second) in one window."""
    stop = threading.Event()
    counts = [0] * n_readers
    learned = [0]
    holder = [copy.deepcopy(model)] if mechanism == "snapshot" else [model]

    def read(k: int) -> None:
        i, n = k * 37, len(requests)
        while not stop.is_set():
            x = requests[i % n]
            if mechanism == "lock":
                model.predict_proba_one(x)
            else:
                holder[0]._predict_event(x)
            i += 1
            counts[k] += 1

    def learn() -> None:
        i, n = 0, len(stream)
        while not stop.is_set():
            x, y = stream[i % n]
            if mechanism == "none":
                model._learn_event(x, float(y), 1.0)
            else:
                model.learn_one(x, y)
            i += 1
            learned[0] += 1
            if mechanism == "snapshot" and i % SNAPSHOT_EVERY == 0:
                with model._lock:
                    holder[0] = copy.deepcopy(model)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(n_readers)]
    if learning:
        threads.append(threading.Thread(target=learn))
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    cpu = max(time.process_time() - cpu0, 1e-9)
    return sum(counts) / seconds, learned[0] / seconds, sum(counts) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    seconds, repeats = (0.05, 1) if args.quick else (args.seconds, args.repeats)
    model, requests, stream = build(500, 1_000) if args.quick else build(5_000)
    mechanisms = {"lock": "lock (CTRClassifier)", "snapshot": f"snapshot every {SNAPSHOT_EVERY}", "none": "no lock (unsafe)"}
    cases = [(mech, readers) for mech in mechanisms for readers in (1, 2, 4)]
    alone: dict = {c: [] for c in cases}
    busy: dict = {c: [] for c in cases}
    learner_alone = []
    # Interleaved: every repeat measures every case once, so a burst of load from other
    # processes on a shared machine spreads over all rows instead of skewing one.
    for _ in range(repeats):
        learner_alone.append(measure(model, requests, stream, 0, True, "lock", seconds)[1])
        for case in cases:
            alone[case].append(measure(model, requests, stream, case[1], False, case[0], seconds))
            busy[case].append(measure(model, requests, stream, case[1], True, case[0], seconds))
    med = statistics.median
    print(f"\n#### Predictions/s while learning: DeepFM (default CTRClassifier), one torch thread, "
          f"median of {repeats} interleaved windows of {seconds:g} s\n")
    print("| mechanism | readers | predictions/s alone | predictions/s while learning | ratio | "
          "learner events/s | predictions per CPU s, while learning |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| (learner alone) | 0 | | | | {med(learner_alone):,.0f} | |")
    for case in cases:
        a = med(r[0] for r in alone[case])
        b = med(r[0] for r in busy[case])
        print(f"| {mechanisms[case[0]]} | {case[1]} | {a:,.0f} | {b:,.0f} | {b / a:.2f} | "
              f"{med(r[1] for r in busy[case]):,.0f} | {med(r[2] for r in busy[case]):,.0f} |")


if __name__ == "__main__":
    main()
