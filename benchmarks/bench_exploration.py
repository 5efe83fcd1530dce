"""When does exploration pay? Greedy vs epsilon-greedy vs Thompson sampling vs UCB vs random, simulated.

Run ``python benchmarks/bench_exploration.py`` (``--quick`` for a smoke run; ``--rounds``,
``--seeds``, ``--workers``, ``--scenarios``, ``--policies``, ``--plot PNG``, ``--out JSONL``
to keep every finished run, ``--resume`` to skip the runs already there, ``--load JSONL`` to
print the tables and plot of saved runs).

The simulated world: users and items with hidden 8-dimensional vectors; user ``u`` clicks
item ``i`` with probability ``sigmoid(3 * theta_u . phi_i + b_i + offset)`` (``b_i`` a
hidden item quality, ``offset`` sets the base click rate). Each round a uniformly drawn user
arrives, the policy shows one item of the catalogue the user has not been shown yet (any
item in ``repeat``), the
click is drawn from the hidden probability, and the ranker learns that one outcome
(``learn_one(user, item, click)``): it only ever learns about what it chose to show. Items
enter the ranker's catalogue through ``add_items`` when they appear (no forced impression),
so a policy that never shows an item never learns about it. The ranker is
``TwoTowerRanker(feedback="explicit", embedding_dim=16)``; the policies are its
``recommend(user, k=1, explore=...)`` with ``None`` (greedy), ``"epsilon"`` (epsilon 0.1),
``EpsilonGreedy(0.3, decay=10)`` (``epsilon-decay``: 0.3 for a user's first 10 items, then
``0.3 sqrt(10 / n)``), ``"thompson"`` and ``UpperConfidenceBound()`` (``ucb``, alpha 0.5),
plus a uniformly random choice and the oracle (the best allowed item under the hidden
probabilities, the ceiling).

Scenarios (``SCENARIOS`` below):

* ``stable``: 200 users, 300 items, all there from the first round, base rate ~23%.
* ``new-items``: a larger catalogue (1,000 items) of which a tenth exists at the start, the
  others arriving at uniformly random rounds (cold-start items with no impressions).
* ``rare``: as ``stable`` with a much lower base click rate (~5%).
* ``many-users``: 2,000 users, so about 10 rounds per user (cold-start users).
* ``shift``: as ``stable``, then every user's hidden taste is redrawn at mid-run.
* ``repeat``: 200 users, 50 items that may be shown to the same user again (an ad slot):
  the classic bandit, where a greedy ranker can settle on a mediocre item for good.

Tables: total clicks over the rounds (median over seeds, with the seeds' min-max), clicks
as a multiple of greedy's (of the medians, and the min-max of the same-seed ratios: a seed
fixes the world, the users' arrivals and the click draws) and as a fraction of the oracle's, clicks in the first 2,000
rounds, and milliseconds per round: ``recommend`` alone (the cost of the policy) and
recommend + learn. The plot shows the median cumulative clicks per policy, relative to
greedy's, per scenario (the oracle only in the tables).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

POLICIES = ("greedy", "epsilon", "epsilon-decay", "thompson", "ucb", "random", "oracle")
QUICK_POLICIES = ("greedy", "epsilon", "thompson", "random", "oracle")
N_FACTORS = 8
#: name -> (users, items, share of items present at the start, click-logit offset, shift at mid-run,
#: items may be shown again)
SCENARIOS = {
    "stable": (200, 300, 1.0, -2.5, False, False),
    "new-items": (200, 1_000, 0.1, -2.5, False, False),
    "rare": (200, 300, 1.0, -4.5, False, False),
    "many-users": (2_000, 300, 1.0, -2.5, False, False),
    "shift": (200, 300, 1.0, -2.5, True, False),
    "repeat": (200, 50, 1.0, -2.5, False, True),
}
QUICK_SCENARIOS = ("stable", "new-items")


class World:
    """Hidden preferences and item arrivals of one seeded simulation."""

    def __init__(self, scenario: str, rounds: int, seed: int, size: float = 1.0) -> None:
        n_users, n_items, start_share, self.offset, self.shifts, self.repeats = SCENARIOS[scenario]
        n_users, n_items = max(10, int(n_users * size)), max(20, int(n_items * size))
        self.n_users, self.n_items = n_users, n_items
        rng = np.random.default_rng([seed, 1])
        self.sd = N_FACTORS**-0.25
        self.theta = rng.normal(0.0, self.sd, (n_users, N_FACTORS))
        self.phi = rng.normal(0.0, self.sd, (n_items, N_FACTORS))
        self.quality = rng.normal(0.0, 0.5, n_items)
        self.theta_later = rng.normal(0.0, self.sd, (n_users, N_FACTORS))
        self.p = self._probabilities(self.theta)
        n0 = max(1, int(round(n_items * start_share)))
        later = np.sort(rng.integers(1, rounds, n_items - n0)) if n_items > n0 else np.zeros(0, dtype=np.int64)
        self.arrival = np.concatenate([np.zeros(n0, dtype=np.int64), later])
        self.shift_round = rounds // 2 if self.shifts else None
        self.users = rng.integers(n_users, size=rounds)
        self.draws = rng.random(rounds)  # the click draw of each round, shared by the policies

    def _probabilities(self, theta: np.ndarray) -> np.ndarray:
        logits = 3.0 * theta @ self.phi.T + self.quality + self.offset
        return 1.0 / (1.0 + np.exp(-logits))

    def shift(self) -> None:
        self.p = self._probabilities(self.theta_later)


def _policy(name: str):
    from river_torchrec.reco.exploration import EpsilonGreedy, UpperConfidenceBound

    return {"greedy": None, "epsilon": "epsilon", "epsilon-decay": EpsilonGreedy(0.3, decay=10),
            "thompson": "thompson", "ucb": UpperConfidenceBound()}[name]


def simulate(scenario: str, policy: str, seed: int, rounds: int, size: float = 1.0) -> dict:
    """One run: the clicks of every round and the time spent in ``recommend`` and ``learn_one``."""
    import torch

    torch.set_num_threads(1)
    world = World(scenario, rounds, seed, size)
    n_users, n_items = world.n_users, world.n_items
    rng = np.random.default_rng([seed, 2])
    ranker = explore = None
    if policy not in ("random", "oracle"):
        from river_torchrec.reco import TwoTowerRanker

        ranker = TwoTowerRanker(feedback="explicit", embedding_dim=16, seed=seed)
        explore = _policy(policy)
    shown = np.zeros((n_users, n_items), dtype=bool)
    order = np.argsort(world.arrival, kind="stable")
    n_arrived = 0
    clicks = np.zeros(rounds, dtype=np.int8)
    t_rec = t_all = 0.0
    for t in range(rounds):
        if world.shift_round is not None and t == world.shift_round:
            world.shift()
        first = n_arrived
        while n_arrived < n_items and world.arrival[order[n_arrived]] <= t:
            n_arrived += 1
        if ranker is not None and n_arrived > first:
            ranker.add_items([f"i{int(i)}" for i in order[first:n_arrived]])
        u = int(world.users[t])
        available = order[:n_arrived]
        if not world.repeats:
            available = available[~shown[u, available]]
        if len(available) == 0:
            continue
        start = time.perf_counter()
        if policy == "random":
            i = int(available[rng.integers(len(available))])
        elif policy == "oracle":
            i = int(available[np.argmax(world.p[u, available])])
        else:
            picked = ranker.recommend(f"u{u}", k=1, exclude_seen=not world.repeats, explore=explore)
            t_rec += time.perf_counter() - start
            i = int(picked[0][1:])
        click = bool(world.draws[t] < world.p[u, i])
        if ranker is not None:
            ranker.learn_one(f"u{u}", f"i{i}", click)
        t_all += time.perf_counter() - start
        shown[u, i] = True
        clicks[t] = click
    return {"scenario": scenario, "policy": policy, "seed": seed, "clicks": clicks,
            "ms_recommend": 1e3 * t_rec / rounds, "ms_per_round": 1e3 * t_all / rounds}


def _job(args: tuple) -> dict:
    return simulate(*args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per scenario and policy (median reported)")
    ap.add_argument("--scenarios", default=None, help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--policies", default=None, help=f"comma-separated, from {', '.join(POLICIES)} (default: all)")
    ap.add_argument("--workers", type=int, default=1, help="processes running simulations in parallel")
    ap.add_argument("--plot", type=pathlib.Path, default=None, help="write the cumulative-click curves here")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="append every finished run to this JSONL file")
    ap.add_argument("--load", type=pathlib.Path, default=None, help="report the runs saved in this JSONL file")
    ap.add_argument("--resume", action="store_true", help="skip the runs already saved in --out")
    ap.add_argument("--data", type=pathlib.Path, default=None, help="unused: the benchmark simulates its data")
    ap.add_argument("--quick", action="store_true",
                    help="300 rounds, 1 seed, worlds a fifth the size, stable and new-items (smoke run)")
    args = ap.parse_args(argv)
    args.size = 1.0
    if args.quick:
        args.rounds, args.seeds, args.size = 300, 1, 0.2
    args.scenarios = _names(ap, args.scenarios, QUICK_SCENARIOS if args.quick else tuple(SCENARIOS), SCENARIOS, "scenarios")
    args.policies = _names(ap, args.policies, QUICK_POLICIES if args.quick else POLICIES, POLICIES, "policies")
    return args


def _names(ap: argparse.ArgumentParser, given: str | None, default: tuple, known, what: str) -> list[str]:
    names = list(default) if given is None else [s.strip() for s in given.split(",") if s.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        ap.error(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    return names


def table(results: list[dict], scenario: str, rounds: int, policies: list[str]) -> str:
    """Markdown table of one scenario: clicks (median, min-max), vs greedy, / oracle, early clicks, cost."""
    by_policy = {p: [r for r in results if r["scenario"] == scenario and r["policy"] == p] for p in policies}
    by_policy = {p: runs for p, runs in by_policy.items() if runs}

    def med(policy: str) -> float | None:
        runs = by_policy.get(policy)
        return statistics.median(int(r["clicks"].sum()) for r in runs) if runs else None

    oracle, greedy = med("oracle"), med("greedy")
    early = min(2_000, rounds)
    lines = [
        f"| policy | seeds | clicks (median) | min-max over seeds | vs greedy | vs greedy, same seed (min-max) | / oracle | clicks in first {early:,} rounds "
        f"| recommend ms | round ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for policy, runs in by_policy.items():
        totals = [int(r["clicks"].sum()) for r in runs]
        m = statistics.median(totals)
        first = statistics.median(int(r["clicks"][:early].sum()) for r in runs)
        rec = statistics.median(r["ms_recommend"] for r in runs)
        ms = statistics.median(r["ms_per_round"] for r in runs)
        vs = f"{m / greedy:.3f}x" if greedy else "n/a"
        # Same seed, same world, same users and click draws: the paired ratio.
        base = {r["seed"]: int(r["clicks"].sum()) for r in by_policy.get("greedy", [])}
        paired = [int(r["clicks"].sum()) / base[r["seed"]] for r in runs if base.get(r["seed"])]
        pr = f"{min(paired):.3f}-{max(paired):.3f}" if paired else "n/a"
        vo = f"{m / oracle:.3f}" if oracle else "n/a"
        rec_s = f"{rec:.2f}" if policy not in ("random", "oracle") else "-"
        lines.append(f"| {policy} | {len(runs)} | {m:,.0f} | {min(totals):,}-{max(totals):,} | {vs} | {pr} | {vo} | {first:,.0f} | "
                     f"{rec_s} | {ms:.2f} |")
    return "\n".join(lines)


def plot(results: list[dict], scenarios: list[str], policies: list[str], path: pathlib.Path) -> None:
    """Median cumulative clicks per policy divided by greedy's, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(scenarios))
    rows = -(-len(scenarios) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    colour = {p: f"C{i}" for i, p in enumerate(POLICIES)}  # one colour per policy in every panel
    for ax in axes.flat[len(scenarios):]:
        ax.set_visible(False)
    for ax, scenario in zip(axes.flat, scenarios):
        curves = {}
        # The oracle (1.7-2.8x greedy) would flatten the curves that matter: it stays in the tables.
        for policy in [p for p in policies if p != "oracle"]:
            runs = [r["clicks"] for r in results if r["scenario"] == scenario and r["policy"] == policy]
            if runs:
                curves[policy] = np.median(np.array([np.cumsum(c) for c in runs]), axis=0)
        base = curves.get("greedy")
        for policy, curve in curves.items():
            if base is not None:
                y = curve / np.maximum(base, 1)
                start = min(200, len(y) - 1)
                ax.plot(np.arange(start, len(y)), y[start:], label=policy, linewidth=1.3, color=colour[policy])
            else:
                ax.plot(curve, label=policy, linewidth=1.3, color=colour[policy])
        ax.set_title(f"{scenario}: cumulative clicks / greedy's (median)", fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("clicks so far / greedy's" if base is not None else "clicks so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save(path: pathlib.Path, result: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps({**result, "clicks": np.flatnonzero(result["clicks"]).tolist(),
                            "rounds": len(result["clicks"])}) + "\n")


def _read(path: pathlib.Path) -> list[dict]:
    results = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        clicks = np.zeros(r.pop("rounds"), dtype=np.int8)
        clicks[r["clicks"]] = 1
        results.append({**r, "clicks": clicks})
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.load is not None:
        results = _read(args.load)
        args.rounds = max(len(r["clicks"]) for r in results)
        args.scenarios = [s for s in args.scenarios if any(r["scenario"] == s for r in results)]
        seeds = {(r["scenario"], r["policy"]): 0 for r in results}
        for r in results:
            seeds[(r["scenario"], r["policy"])] += 1
        args.seeds = min(seeds.values())
    else:
        # Seed-major order: an interrupted run still covers every scenario.
        jobs = [(s, p, seed, args.rounds, args.size)
                for seed in range(args.seeds) for s in args.scenarios for p in args.policies]
        results = []
        if args.resume and args.out is not None and args.out.exists():
            results = [r for r in _read(args.out)
                       if r["scenario"] in args.scenarios and r["policy"] in args.policies and r["seed"] < args.seeds]
            done = {(r["scenario"], r["policy"], r["seed"]) for r in results}
            jobs = [j for j in jobs if (j[0], j[1], j[2]) not in done]
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                for r in pool.map(_job, jobs):
                    results.append(r)
                    if args.out is not None:
                        _save(args.out, r)
        else:
            for j in jobs:
                results.append(_job(j))
                if args.out is not None:
                    _save(args.out, results[-1])
    print(f"# Exploration: {args.rounds:,} rounds, {args.seeds} seed(s) ({time.perf_counter() - start:.0f} s)\n")
    for scenario in args.scenarios:
        n_users, n_items, share, offset, shifts, repeats = SCENARIOS[scenario]
        print(f"## {scenario} ({max(10, int(n_users * args.size)):,} users, {max(20, int(n_items * args.size)):,} items"
              f"{'' if share == 1 else f', {share:.0%} at the start'}, offset {offset}"
              f"{', taste redrawn at mid-run' if shifts else ''}{', items may be shown again' if repeats else ''})\n")
        print(table(results, scenario, args.rounds, args.policies) + "\n")
    if args.plot is not None:
        plot(results, args.scenarios, args.policies, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
