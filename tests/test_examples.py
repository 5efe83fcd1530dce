"""Every script of ``examples/`` runs on a few hundred events and prints sensible numbers."""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"

#: What each example needs beyond the core package (module, attribute or None).
NEEDS = {
    "online_ctr_criteo.py": [("river_torchrec.datasets", "Criteo"), ("river_torchrec.features", "LogBucketizer")],
    "warm_start.py": [],
    "feature_pipeline.py": [("river_torchrec.features", "DecayedCTREncoder")],
    "drift_aware_lr.py": [("river_torchrec.optim.schedulers", "DriftAwareLR")],
    "sklearn_wrapping.py": [("river_torchrec.compat", "SKLearnCTRClassifier")],
    "save_and_resume.py": [("river_torchrec.persistence", None)],
    "gpu.py": [],
    "recommend.py": [("river_torchrec.reco", "TwoTowerRanker")],
}


def _missing(needs: list[tuple[str, str | None]]) -> str | None:
    for module, attr in needs:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            return f"{module} is not importable yet ({e})"
        if attr is not None and not hasattr(mod, attr):
            return f"{module}.{attr} does not exist yet"
    return None


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(NEEDS)


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_example_runs(script):
    reason = _missing(NEEDS[script])
    if reason:
        pytest.skip(reason)
    # One thread per process: the test machine is shared and per-event steps gain nothing.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--n", "300"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert run.returncode == 0, run.stderr
    if script == "recommend.py":
        # A ranking example: it prints ranking metrics, not a LogLoss.
        share = re.search(r"HitRate@10 is (\d+)% of the oracle's", run.stdout)
        assert share and 0 < int(share.group(1)) <= 100, run.stdout
        return
    losses = [float(v) for v in re.findall(r"LogLoss:? (-?\d+\.\d+)", run.stdout)]
    assert losses, run.stdout
    # Between a perfect model and a coin flip on a stream where clicks are the minority.
    assert all(0.05 < v < 0.75 for v in losses), run.stdout
    if script == "save_and_resume.py":
        gap = float(re.search(r"largest difference between their predictions: (\S+)", run.stdout).group(1))
        assert gap < 1e-6
