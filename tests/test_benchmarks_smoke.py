"""Smoke test of ``benchmarks/run_all.py`` and checks of the inputs it gives the peers."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from river import facto, metrics

from helpers import load_script, markdown_rows

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "benchmarks" / "run_all.py"
#: The deep-river virtualenv of benchmarks/README.md; its row is skipped without it.
DEEP_RIVER_PYTHON = pathlib.Path("/tmp/dr-venv/bin/python")

OURS = "river-torchrec default"
RIVER = ("river LogisticRegression", "river FMClassifier", "river FFMClassifier")


def _load_run_all():
    return load_script(RUN_ALL, "run_all")


def _table_rows(stdout: str) -> dict[str, list[str]]:
    return markdown_rows(stdout, "model")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    cmd = [sys.executable, str(RUN_ALL), "--quick", "--only", "synthetic", "--runs", "1", "--out", str(out)]
    if DEEP_RIVER_PYTHON.exists():
        cmd += ["--deep-river-python", str(DEEP_RIVER_PYTHON)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_quick_run_has_our_default_and_rivers_rows(quick_run):
    stdout, _ = quick_run
    rows = _table_rows(stdout)
    for label in (OURS, *RIVER):
        eps, logloss, auc, rss, ratio = rows[label][:5]
        assert float(eps.replace(",", "")) > 0
        assert 0 < float(logloss.strip("*")) < 1
        assert 0 <= float(auc) <= 1
        assert float(rss) > 0
        assert ratio.endswith("x")
    assert rows[OURS][4] == "1.00x"


def test_printed_table_matches_json(quick_run):
    stdout, results = quick_run
    rows = _table_rows(stdout)
    measured = [r for r in results["datasets"]["synthetic"]["rows"] if "logloss" in r]
    assert {r["model"] for r in measured} >= {OURS, *RIVER}
    best = min(r["logloss"] for r in measured)
    for r in measured:
        printed = rows[r["model"]][1]
        assert printed == (f"**{r['logloss']:.4f}**" if r["logloss"] == best else f"{r['logloss']:.4f}")
        assert rows[r["model"]][0] == f"{np.median(r['eps']):,.0f}"


def test_deep_river_row_is_measured_or_skipped(quick_run):
    stdout, _ = quick_run
    cells = _table_rows(stdout)["deep-river Classifier (MLP)"]
    if DEEP_RIVER_PYTHON.exists():
        assert float(cells[1].strip("*")) > 0, cells
    else:
        assert cells[0] == "skipped: no --deep-river-python given"


def test_logloss_and_auc_agree_with_river_and_sklearn():
    run_all = _load_run_all()
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    p = np.clip(rng.random(500) * 0.6 + 0.2 * y, 0, 1)
    p[0] = 0.0  # clipped, as river clips
    river_ll = metrics.LogLoss()
    for t, q in zip(y, p):
        river_ll.update(bool(t), {True: float(q), False: 1 - float(q)})
    assert math.isclose(run_all.logloss(y.astype(float), p), river_ll.get(), rel_tol=1e-9)
    # Exact AUC: the share of (positive, negative) pairs ranked right, ties counting half.
    pos, neg = p[y], p[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert math.isclose(run_all.auc(y.astype(float), p), pairs, rel_tol=1e-12)


def test_river_peers_input_keeps_fields_apart_for_ffm():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from peers.river_input import OneHotLog, VWFormatter
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    x = {"user_id": "u1", "user_segment": "casual", "price": math.e - 1, "page": None, "new": True}
    z = OneHotLog().transform_one(x)
    assert z == {"user-id_u1": 1.0, "user-segment_casual": 1.0, "price": pytest.approx(1.0), "new_True": 1.0}
    ffm = facto.FFMClassifier()
    assert [ffm._field(k) for k in z] == ["user-id", "user-segment", "price", "new"]
    assert VWFormatter().line(x, False) == "-1 |a u1 |b casual |c v:1 |d True"


def test_from_json_reprints_the_same_tables(quick_run, tmp_path):
    stdout, results = quick_run
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(results))
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--from-json", str(saved)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _table_rows(proc.stdout) == _table_rows(stdout)
