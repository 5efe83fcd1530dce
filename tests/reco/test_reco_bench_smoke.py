"""A tiny run of benchmarks/bench_reco_speed.py: it runs and prints every table."""

from __future__ import annotations

import importlib.util
import pathlib

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_reco_speed.py"


def test_speed_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_reco_speed", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--runs", "1", "--calls", "3", "--items", "500", "--warmup", "50", "--learn-events", "50"])
    out = capsys.readouterr().out
    for title in ("rank of 1,000 candidates", "over 1,682 items", "over 500 items", "positives per CPU second"):
        assert title in out
    assert res["rank/two-tower/p50"] > 0 and res["learn/two-tower"] > 0
    # Below the index's minimum size the faiss ranker answers exactly.
    assert "big/faiss/recall" not in res or res["big/faiss/recall"] == 1.0
