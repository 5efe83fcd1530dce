"""Smoke test of benchmarks/bench_exploration.py --quick and of bench_reco's baseline adapters."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from river import reco

from helpers import load_script, markdown_rows

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_exploration_quick_run(tmp_path: pathlib.Path):
    plot = tmp_path / "exploration.png"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_exploration.py"), "--quick",
         "--workers", "1", "--plot", str(plot)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = markdown_rows(run.stdout, "policy")
    assert set(rows) == {"greedy", "epsilon", "thompson", "random", "oracle"}
    assert run.stdout.count("| oracle |") == 2  # one table per scenario
    assert plot.stat().st_size > 10_000


def test_river_with_negatives_ranks_like_predict_one():
    bench = load_script(REPO / "benchmarks" / "bench_reco.py", "bench_reco")
    model = bench.RiverWithNegatives(reco.BiasedMF(n_factors=3, seed=0), n_negatives=2, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        model.learn_one(f"u{rng.integers(10)}", f"i{rng.integers(20)}", bool(rng.random() < 0.5))
    items = [f"i{j}" for j in range(20)]
    scores = {i: model.model.predict_one("u1", i) for i in items}
    assert model.rank("u1", items) == sorted(items, key=lambda i: -scores[i])
    # Two negatives per positive: BiasedMF's global mean counts them as zeros.
    assert 0.1 < model.model.global_mean.get() < 0.4


def test_flurs_adapter_orders_by_flurs_scores():
    pytest.importorskip("flurs")
    bench = load_script(REPO / "benchmarks" / "bench_reco.py", "bench_reco")
    for kind in ("mf", "bpr"):
        model = bench.FlursRanker(kind, seed=0, k=4, learn_rate=0.05, l2_reg=0.01)
        rng = np.random.default_rng(1)
        for _ in range(300):
            model.learn_one(f"u{rng.integers(5)}", f"i{rng.integers(15)}", bool(rng.random() < 0.7))
        items = [f"i{j}" for j in range(15)]
        ranked = model.rank("u1", items)
        u = model._users["u1"]
        raw = model.rec.score(u, np.array([model._items[i].index for i in items]))
        best = items[int(np.argmin(raw) if kind == "mf" else np.argmax(raw))]
        assert ranked[0] == best and sorted(ranked) == sorted(items)
