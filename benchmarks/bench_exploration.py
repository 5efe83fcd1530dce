"""When does exploration pay? Greedy vs epsilon-greedy vs Thompson sampling vs random, simulated.

Run ``python benchmarks/bench_exploration.py`` (``--quick`` for a smoke run; ``--rounds``,
``--seeds``, ``--workers``, ``--scenarios``, ``--plot PNG``).

The simulated world: ``n_users`` users and ``n_items`` items with hidden 8-dimensional
vectors; user ``u`` clicks item ``i`` with probability
``sigmoid(3 * theta_u . phi_i + b_i - 2.5)`` (``b_i`` a hidden item quality): about 23% on
average (what a random policy gets), well over 90% for a user's best items. Each round a uniformly drawn user
arrives, the policy shows one item the user has not been shown yet, the click is drawn from
the hidden probability, and the ranker learns that one outcome (``learn_one(user, item,
click)``): it only ever learns about what it chose to show. The ranker is
``TwoTowerRanker(feedback="explicit", embedding_dim=16)``; the policies are its
``recommend(user, k=1, explore=...)`` with ``None`` (greedy), ``"epsilon"`` (epsilon 0.1) and
``"thompson"``, plus a uniformly random choice and the oracle (the best unseen item under the
hidden probabilities, the ceiling).

Scenarios:

* ``stable``: every item exists from the first round.
* ``new-items``: a sixth of the items exist at the start, the others arrive at uniformly
  random rounds (a catalogue with a steady flow of new items, the cold-start case). A new
  item enters the ranker's catalogue through one forced impression to a random user (the
  "new arrivals" slot most services have), learned by the ranker and identical for every
  policy; it is not counted as a round.

Tables: total clicks over the rounds (median over seeds, with the seeds' min-max), clicks
as a fraction of the oracle's, and milliseconds per round (recommend + learn). The plot
shows the median cumulative click rate per policy.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

POLICIES = ("greedy", "epsilon", "thompson", "random", "oracle")
SCENARIOS = ("stable", "new-items")
N_FACTORS = 8


class World:
    """Hidden preferences and item arrivals of one seeded simulation."""

    def __init__(self, scenario: str, n_users: int, n_items: int, rounds: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 1])
        sd = N_FACTORS**-0.25
        self.theta = rng.normal(0.0, sd, (n_users, N_FACTORS))
        self.phi = rng.normal(0.0, sd, (n_items, N_FACTORS))
        self.quality = rng.normal(0.0, 0.5, n_items)
        logits = 3.0 * self.theta @ self.phi.T + self.quality - 2.5
        self.p = 1.0 / (1.0 + np.exp(-logits))
        if scenario == "stable":
            self.arrival = np.zeros(n_items, dtype=np.int64)
        else:
            n0 = max(1, n_items // 6)
            later = np.sort(rng.integers(1, rounds, n_items - n0))
            self.arrival = np.concatenate([np.zeros(n0, dtype=np.int64), later])
        self.users = rng.integers(n_users, size=rounds)
        self.draws = rng.random(rounds)  # the click draw of each round, shared by the policies
        self.forced_users = rng.integers(n_users, size=n_items)
        self.forced_draws = rng.random(n_items)


def simulate(scenario: str, policy: str, seed: int, rounds: int, n_users: int, n_items: int) -> dict:
    import torch

    torch.set_num_threads(1)
    world = World(scenario, n_users, n_items, rounds, seed)
    rng = np.random.default_rng([seed, 2])
    ranker = None
    if policy not in ("random", "oracle"):
        from river_torchrec.reco import TwoTowerRanker

        ranker = TwoTowerRanker(feedback="explicit", embedding_dim=16, seed=seed)
    explore = {"greedy": None, "epsilon": "epsilon", "thompson": "thompson"}.get(policy)
    shown = np.zeros((n_users, n_items), dtype=bool)
    order = np.argsort(world.arrival, kind="stable")
    n_arrived = 0
    clicks = np.zeros(rounds, dtype=np.int8)
    seconds = 0.0
    for t in range(rounds):
        while n_arrived < n_items and world.arrival[order[n_arrived]] <= t:
            i = int(order[n_arrived])
            n_arrived += 1
            if ranker is not None:
                fu = int(world.forced_users[i])
                ranker.learn_one(f"u{fu}", f"i{i}", bool(world.forced_draws[i] < world.p[fu, i]))
        u = int(world.users[t])
        available = order[:n_arrived]
        available = available[~shown[u, available]]
        if len(available) == 0:
            continue
        start = time.perf_counter()
        if policy == "random":
            i = int(available[rng.integers(len(available))])
        elif policy == "oracle":
            i = int(available[np.argmax(world.p[u, available])])
        else:
            picked = ranker.recommend(f"u{u}", k=1, exclude_seen=True, explore=explore)
            i = int(picked[0][1:]) if picked else int(available[rng.integers(len(available))])
        click = bool(world.draws[t] < world.p[u, i])
        if ranker is not None:
            ranker.learn_one(f"u{u}", f"i{i}", click)
        seconds += time.perf_counter() - start
        shown[u, i] = True
        clicks[t] = click
    return {"scenario": scenario, "policy": policy, "seed": seed, "clicks": clicks,
            "ms_per_round": 1e3 * seconds / rounds}


def _job(args: tuple) -> dict:
    return simulate(*args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per scenario and policy (median reported)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--workers", type=int, default=2, help="processes running simulations in parallel")
    ap.add_argument("--plot", type=pathlib.Path, default=None, help="write the cumulative click-rate curves here")
    ap.add_argument("--quick", action="store_true", help="300 rounds, 1 seed, 40 users, 60 items (smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seeds, args.users, args.items = 300, 1, 40, 60
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def table(results: list[dict], scenario: str, rounds: int) -> str:
    by_policy = {p: [r for r in results if r["scenario"] == scenario and r["policy"] == p] for p in POLICIES}
    oracle = statistics.median(int(r["clicks"].sum()) for r in by_policy["oracle"])
    greedy = statistics.median(int(r["clicks"].sum()) for r in by_policy["greedy"])
    early = min(2_000, rounds)
    lines = [
        f"| policy | clicks (median) | min-max over seeds | vs greedy | / oracle | clicks in first {early:,} rounds | ms/round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for policy, runs in by_policy.items():
        totals = [int(r["clicks"].sum()) for r in runs]
        med = statistics.median(totals)
        first = statistics.median(int(r["clicks"][:early].sum()) for r in runs)
        ms = statistics.median(r["ms_per_round"] for r in runs)
        lines.append(
            f"| {policy} | {med:,.0f} | {min(totals):,}-{max(totals):,} | {med / greedy:.3f}x | "
            f"{med / oracle:.3f} | {first:,.0f} | {ms:.2f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], scenarios: list[str], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 4.2), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for policy in POLICIES:
            runs = [r["clicks"] for r in results if r["scenario"] == scenario and r["policy"] == policy]
            curves = np.array([np.cumsum(c) / np.arange(1, len(c) + 1) for c in runs])
            ax.plot(np.median(curves, axis=0), label=policy, linewidth=1.3)
        ax.set_title(f"{scenario}: cumulative click rate (median over seeds)", fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("clicks / rounds so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = [(s, p, seed, args.rounds, args.users, args.items)
            for s in args.scenarios for seed in range(args.seeds) for p in POLICIES]
    start = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_job, jobs))
    else:
        results = [_job(j) for j in jobs]
    print(f"# Exploration: {args.rounds:,} rounds, {args.users} users, {args.items} items, "
          f"{args.seeds} seed(s) ({time.perf_counter() - start:.0f} s)\n")
    for scenario in args.scenarios:
        print(f"## {scenario}\n")
        print(table(results, scenario, args.rounds) + "\n")
    if args.plot is not None:
        plot(results, args.scenarios, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
