"""Smoke test of ``benchmarks/bench_features.py`` and checks of the progressive loop it runs."""

from __future__ import annotations

import copy
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from river import base, compose

from river_torchrec.features import DecayedCTREncoder, FrequencyFilter

from helpers import load_script, markdown_rows

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_features.py"


def _load_bench():
    return load_script(SCRIPT, "bench_features")


def _table_rows(stdout: str) -> dict[str, list[str]]:
    return markdown_rows(stdout, "pipeline")


class _Recorder(base.Classifier):
    """A final step that records what it predicts from and learns from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def learn_one(self, x: dict, y: bool) -> None:
        self.calls.append(("learn", dict(x)))

    def predict_proba_one(self, x: dict) -> dict:
        self.calls.append(("predict", dict(x)))
        return {False: 0.5, True: 0.5}


def test_quick_synthetic_run_prints_a_table_with_finite_numbers():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "synthetic"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "#### synthetic: SyntheticCTR(n_events=1,000, drift='abrupt', seed=42)" in proc.stdout
    rows = _table_rows(proc.stdout)
    assert list(rows) == ["raw", "quantile bins", "true crosses", "full"]
    base_ll = float(rows["raw"][1])
    for label, (eps, ll, auc, delta) in rows.items():
        assert float(eps.replace(",", "")) > 0
        assert math.isfinite(float(ll)) and 0 < float(ll) < 1
        assert 0 <= float(auc) <= 1
        if label == "raw":
            assert delta == "baseline"
        else:
            assert float(delta) == pytest.approx(float(ll) - base_ll, abs=2e-4)
    # Each row's exact pipeline is printed under the table.
    assert "- raw: `CTRClassifier(model='deepfm', seed=42)`" in proc.stdout
    assert "- full: `QuantileBinner(n_bins=10, fields=" in proc.stdout


def test_unknown_dataset_is_refused():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "criteo,imagenet"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "imagenet" in proc.stderr


def test_missing_data_is_skipped(tmp_path):
    bench = _load_bench()
    events, what = bench.load_events("criteo", tmp_path, 10, 42)
    assert events is None
    assert what.startswith("skipped:") and "criteo_dac_head10k.csv.gz" in what


def test_pipeline_encoder_never_sees_the_label_it_predicts():
    """With a unique id per event, a leaking encoder would reveal the label through its CTR."""
    bench = _load_bench()
    recorder = _Recorder()
    model = compose.Pipeline(
        DecayedCTREncoder(fields=["event"], half_life=math.inf, prior_strength=1.0),
        FrequencyFilter(min_count=1, fields=["event"]),
        recorder,
    )
    labels = [True, True, False, True, False, False]
    events = [({"event": f"e{i}"}, y) for i, y in enumerate(labels)]
    predictions, _ = bench.progressive(model, events)
    assert predictions.tolist() == [0.5] * len(events)
    # predict, then learn, each from the same features: the global CTR of the *previous* labels
    # (0.5 before any), a zero impression count, and the rare token.
    expected_ctr = [0.5] + [float(np.mean(labels[:i])) for i in range(1, len(labels))]
    assert [kind for kind, _ in recorder.calls] == ["predict", "learn"] * len(events)
    for i, ctr in enumerate(expected_ctr):
        for _, x in recorder.calls[2 * i : 2 * i + 2]:
            assert x == {"event": "<rare>", "event_ctr": pytest.approx(ctr), "event_log_imps": 0.0}


def test_progressive_leaves_the_events_unchanged():
    bench = _load_bench()
    events, _ = bench.load_events("synthetic", None, 50, 42)
    before = copy.deepcopy(events)
    for _, make in bench.ROWS["synthetic"](42):
        bench.progressive(make(), events)
    assert events == before
