"""Poisoning and click fraud, tried as an attacker would: undefended vs default vs strongest defence.

Run ``python benchmarks/bench_poisoning.py`` (``--quick`` for a smoke run, ``--data PATH``
for the Criteo sample, default ``<repo>/../shared/data``; absent files are skipped).

Each stream is learned by progressive validation (``predict_proba_one``, then ``learn_one``)
with the default ``CTRClassifier`` (DeepFM), once clean and once per attack, all inserted
in the same window (from 25% of the genuine stream on):

(a) **bot farm**: 50 fake sender ids send 1% of the traffic (as many events as 1% of the
    genuine stream, two or three each), all clicks on one new target item, spread over
    the 40% of the stream after the attack starts;
(b) **burst**: one id sends 10,000 clicks on the target in a row;
(c) **label flipping**: 5% of the genuine events of 2,000 consecutive events have their
    label flipped.

Attack events copy the other fields of random genuine events, so only the sender, the
target and the label give them away. From the attack's start on, 1% of genuine
impressions show the target, clicked with probability 5%: the genuine traffic that could
correct the model. Reported per stream, attack and defence:

* **target CTR**: the mean predicted CTR of the target for a fixed probe of 300 genuine
  contexts (item replaced by the target), at the end of the attack; for (c), of the
  genuine contexts as they are (the whole model's calibration);
* **lift**: that CTR over the clean run's at the same point, minus 1;
* **LogLoss**: progressive LogLoss on the genuine events only (their true labels);
  **cost** is that minus the undefended clean run's (the price of the defence when no
  one attacks, on the clean row, and what the attack costs genuine users on the others);
* **recovery**: events after the attack stops until the lift is within 25% (probed every
  250 events; ``never`` if not by the end of the stream).
"""

from __future__ import annotations

import argparse
import pathlib
import random
import statistics
import time
import warnings

import numpy as np
import pandas as pd
import torch

from river_torchrec import CTRClassifier, datasets
from river_torchrec.defence import PoisoningDefence

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGET = "target-item-0000"
BOT_SHARE = 0.01
N_BOTS = 50
BURST = 10_000
FLIP_RATE = 0.05
FLIP_SPAN = 2_000
TARGET_EXPOSURE = 0.01
TARGET_CTR = 0.05
PROBE_SIZE = 300
PROBE_EVERY = 250
RECOVERED = 0.25

DEFENCES = {
    "undefended": None,
    "default PoisoningDefence()": {},
    "strongest": {
        "min_history": 20,
        "alarm_nats": 4.6,
        "max_share": 0.3,
        "burst_allowance": 5.0,
        "share_half_life": 2000.0,
        "max_logit_gradient": 0.8,
    },
}


def genuine_stream(events: list, item_field: str, start: int, seed: int) -> list:
    """The genuine events, the target shown to 1% of them from ``start`` on."""
    rng = random.Random(seed)
    out = []
    for i, (x, y) in enumerate(events):
        if i >= start and rng.random() < TARGET_EXPOSURE:
            x = {**x, item_field: TARGET}
            y = rng.random() < TARGET_CTR
        out.append((x, bool(y)))
    return out


def attacked(genuine: list, attack: str, user_field: str, item_field: str, start: int, seed: int) -> tuple[list, int]:
    """``[(x, learned label, true label or None for attack events)]`` and the attack's last index."""
    rng = random.Random(seed + 1)
    stream = [(x, y, y) for x, y in genuine]
    n = len(genuine)

    def fake(sender: str) -> dict:
        x = dict(rng.choice(genuine[:start])[0])
        x[user_field] = sender
        x[item_field] = TARGET
        return x

    if attack == "clean":
        return stream, start
    if attack == "bot farm":
        n_bot = int(round(BOT_SHARE * n))
        end = start + int(0.4 * n)
        senders = [f"bot{j % N_BOTS:02d}" for j in range(n_bot)]
        rng.shuffle(senders)
        slots = sorted(rng.randrange(start, end) for _ in range(n_bot))
        for k, (slot, sender) in enumerate(zip(reversed(slots), senders)):
            stream.insert(slot, (fake(sender), True, None))
        return stream, end + n_bot
    if attack == "burst":
        burst = [(fake("burst-sender"), True, None) for _ in range(BURST)]
        return stream[:start] + burst + stream[start:], start + BURST
    if attack == "label flip":
        out = []
        for i, (x, y, true) in enumerate(stream):
            if start <= i < start + FLIP_SPAN and rng.random() < FLIP_RATE:
                out.append((x, not y, true))
            else:
                out.append((x, y, true))
        return out, start + FLIP_SPAN
    raise ValueError(attack)


def run(stream: list, defence: dict | None, probe: pd.DataFrame, attack_end: int, fields=("user_id", "item_id")) -> dict:
    if defence is not None:
        defence = PoisoningDefence(user_field=fields[0], item_fields=(fields[1],), **defence)
    model = CTRClassifier(seed=1, defence=defence)
    losses, probes = [], {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, (x, y, true) in enumerate(stream):
            if i % PROBE_EVERY == 0 or i == attack_end:
                probes[i] = float(model.predict_proba_many(probe)[True].mean())
            p = model.predict_proba_one(x)[True]
            if true is not None:
                p = min(max(p, 1e-15), 1 - 1e-15)
                losses.append(-np.log(p) if true else -np.log1p(-p))
            model.learn_one(x, y)
    seconds = time.perf_counter() - t0
    probes[len(stream)] = float(model.predict_proba_many(probe)[True].mean())
    return {"logloss": float(np.mean(losses)), "probes": probes, "seconds": seconds, "model": model}


def _clean_probe_at(clean: dict, i: int, offset: int) -> float:
    """The clean run's probe at the genuine position matching attacked index ``i``."""
    keys = sorted(clean["probes"])
    j = max(0, i - offset)
    return clean["probes"][min(keys, key=lambda k: abs(k - j))]


def recovery(att: dict, clean: dict, attack_end: int, offset: int) -> str:
    for i in sorted(att["probes"]):
        if i < attack_end:
            continue
        base = _clean_probe_at(clean, i, offset)
        if abs(att["probes"][i] / base - 1) <= RECOVERED:
            return f"{i - attack_end:,}"
    return "never"


def scenario(name: str, events: list, user_field: str, item_field: str, quick: bool) -> None:
    n = len(events)
    start = n // 4
    genuine = genuine_stream(events, item_field, start, seed=3)
    rng = random.Random(5)
    contexts = [dict(x) for x, _ in rng.sample(genuine[:start], PROBE_SIZE)]
    target_probe = pd.DataFrame([{**x, item_field: TARGET} for x in contexts])
    plain_probe = pd.DataFrame(contexts)
    attacks = ["clean", "bot farm", "burst", "label flip"]
    print(f"\n#### {name}: {n:,} genuine events, sender field `{user_field}`, target field `{item_field}`\n")
    print("| attack | defence | target CTR | clean run's | lift | LogLoss (genuine) | cost vs undefended clean | recovery (events) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    reference = {}
    for attack in attacks:
        stream, attack_end = attacked(genuine, attack, user_field, item_field, start, seed=11)
        probe = plain_probe if attack == "label flip" else target_probe
        # Injected events shift the attacked stream's indices after the attack by this much.
        offset = len(stream) - n
        for label, params in DEFENCES.items():
            key = (label, attack == "label flip")
            if attack == "clean" or key not in reference:
                clean = run([(x, y, y) for x, y in genuine], params, probe, start, (user_field, item_field))
                reference[key] = clean
            clean = reference[key]
            res = clean if attack == "clean" else run(stream, params, probe, attack_end, (user_field, item_field))
            base_ll = reference[("undefended", False)]["logloss"]
            at = attack_end if attack != "clean" else start
            ctr = res["probes"].get(at, res["probes"][max(k for k in res["probes"] if k <= at)])
            clean_ctr = _clean_probe_at(clean, at, offset if attack != "clean" else 0)
            lift = ctr / clean_ctr - 1
            rec = "" if attack == "clean" else recovery(res, clean, attack_end, offset)
            print(
                f"| {attack} | {label} | {ctr:.2%} | {clean_ctr:.2%} | {lift:+.0%} | {res['logloss']:.4f} | "
                f"{res['logloss'] - base_ll:+.4f} | {rec} |"
            )


def speed(events: list, repeats: int) -> None:
    """CPU time per event of progressive predict + learn_one, the defences interleaved run by run."""
    print("\n#### Cost in time: predict_proba_one + learn_one, DeepFM, one torch thread, clean synthetic stream, "
          f"CPU µs per event, median of {repeats} interleaved runs of {len(events):,} events\n")
    print("| defence | µs per event | vs undefended |")
    print("|---|---:|---:|")
    times: dict[str, list[float]] = {label: [] for label in DEFENCES}
    for _ in range(repeats):
        for label, params in DEFENCES.items():
            model = CTRClassifier(seed=1, defence=None if params is None else PoisoningDefence(**params))
            t0 = time.process_time()
            for x, y in events:
                model.predict_proba_one(x)
                model.learn_one(x, y)
            times[label].append((time.process_time() - t0) / len(events) * 1e6)
    base = statistics.median(times["undefended"])
    for label, values in times.items():
        us = statistics.median(values)
        print(f"| {label} | {us:.1f} | {us / base - 1:+.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--data", type=pathlib.Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--n", type=int, default=12_000, help="genuine synthetic events (default 12,000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    global BURST, FLIP_SPAN
    n = 1_200 if args.quick else args.n
    if args.quick:
        BURST, FLIP_SPAN = 1_000, 200
    synthetic = list(datasets.SyntheticCTR(n_events=n, seed=42))
    scenario(f"SyntheticCTR(n_events={n:,}, seed=42)", synthetic, "user_id", "item_id", args.quick)
    criteo = args.data / "criteo_dac_head10k.csv.gz"
    if criteo.exists():
        events = list(datasets.Criteo(criteo))
        if args.quick:
            events = events[:1_200]
        scenario(f"Criteo sample ({criteo.name})", events, "C18", "C24", args.quick)
    else:
        print(f"\n(skipped Criteo: {criteo} not found)")
    speed(synthetic[:4_000], 1 if args.quick else 5)


if __name__ == "__main__":
    main()
