"""Progressive validation of deep-river's ``Classifier``, run in deep-river's own virtualenv.

``/path/to/venv/bin/python benchmarks/peers/deep_river_runner.py --events FILE --runs R --out FILE``

deep-river pins an older river and pandas than this project, so ``run_all.py`` writes the
event stream to a JSONL file and runs this script under ``--deep-river-python``. It needs
only the standard library, torch and deep-river, and writes ``{"eps", "preds",
"peak_rss_mb"}`` as JSON to ``--out``.

Input: deep-river's ``Classifier`` turns a dict into a dense tensor with one column per
feature name, so categorical values cannot enter as they are. Each categorical
``field=value`` is hashed (CRC-32) into one of ``--buckets`` indicator columns ``h0``..,
and each numeric field keeps its own column with the log-scaled value
``sign(v) * log1p(|v|)`` (the same scaling every other model gets). All column names are
registered before the first event: deep-river orders columns by sorted name, so names
arriving later would shift the columns under a fixed input layer. (Its feature-incremental
mode would instead grow the input layer, and rebuild the optimizer, for each of the tens of
thousands of distinct values of a click log.) The converter walks every registered column
per call, so its cost grows with ``--buckets``; 1,024 keeps deep-river fast, which makes the
speed ratios conservative, at the price of hash collisions.

Model: the same widths as ``CTRClassifier(model="deepfm")``: a linear layer to
``n_fields * 8`` units (the embedding: a hashed one-hot vector times a weight matrix), then
ReLU layers of 64 and 32 units and 2 logits, trained with cross-entropy by Adam (lr 1e-3,
deep-river's default and the library's). Both classes are registered up front so that
class indices do not depend on which label arrives first.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
import zlib


def hashed(x: dict, buckets: int) -> dict:
    out: dict = {}
    for key, value in x.items():
        if value is None:
            continue
        if isinstance(value, (str, bool)):
            col = f"h{zlib.crc32(f'{key}={value}'.encode()) % buckets}"
            out[col] = out.get(col, 0.0) + 1.0
        else:
            v = float(value)
            out[f"n:{key}"] = math.copysign(math.log1p(abs(v)), v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", required=True)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--buckets", type=int, default=1024)
    ap.add_argument("--embedding-dim", type=int, default=8)
    ap.add_argument("--hidden", default="64,32")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from deep_river.classification import Classifier

    torch.set_num_threads(1)
    with open(args.events) as f:
        events = [(x, bool(y)) for x, y in map(json.loads, f)]
    fields = {k for x, _ in events for k in x}
    numeric = sorted({f"n:{k}" for x, _ in events for k, v in x.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    columns = dict.fromkeys([f"h{i}" for i in range(args.buckets)] + numeric, 0.0)
    hidden = [int(h) for h in args.hidden.split(",")]
    widths = [len(columns), len(fields) * args.embedding_dim, *hidden]

    def module() -> torch.nn.Module:
        layers: list[torch.nn.Module] = [torch.nn.Linear(widths[0], widths[1])]
        for a, b in zip(widths[1:-1], widths[2:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(widths[-1], 2))
        return torch.nn.Sequential(*layers)

    eps, preds = [], None
    for _ in range(args.runs):
        torch.manual_seed(42)
        clf = Classifier(module=module(), loss_fn="cross_entropy", optimizer_fn="adam", lr=1e-3, seed=42)
        clf.observed_features.update(columns)
        clf.observed_classes.update([False, True])
        out = []
        start = time.perf_counter()
        for x, y in events:
            h = hashed(x, args.buckets)
            out.append(clf.predict_proba_one(h).get(True, 0.5))
            clf.learn_one(h, y)
        eps.append(len(events) / (time.perf_counter() - start))
        preds = preds or out
    # VmHWM, not ru_maxrss, which Linux inherits from the parent across fork and execve.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    maxrss = peak
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    result = {"eps": eps, "preds": preds, "peak_rss_mb": peak, "ru_maxrss_mb": maxrss}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
