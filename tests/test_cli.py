"""The ``river-torchrec`` command: outputs, defaults, and agreement with river's evaluation."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from river import compose, evaluate, linear_model, metrics, preprocessing
from sklearn.metrics import log_loss, roc_auc_score

from river_torchrec import CTRClassifier, cli
from river_torchrec.datasets import SyntheticCTR

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_evaluate_writes_plot_and_json(tmp_path):
    png, out = tmp_path / "p.png", tmp_path / "r.json"
    cmd = [sys.executable, "-m", "river_torchrec", "evaluate", "--n", "2000", "--plot", str(png), "--json", str(out)]
    cmd += ["--model", "river-lr", "--model", "river-fm", "--model", "deepfm", "--model", "lr"]
    cmd += ["--scheduler", "drift-aware", "--quiet"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        width, height = image.size
        assert image.format == "PNG"
    assert 800 <= width <= 3000 and 500 <= height <= 3000

    report = json.loads(out.read_text())
    assert list(report["models"]) == ["river-lr", "river-fm", "deepfm", "lr"]
    assert report["config"]["n"] == 2000 and report["config"]["scheduler"] == "drift-aware"
    assert report["stream"]["drift_points"] == [1000]
    for name, m in report["models"].items():
        assert m["n_events"] == 2000
        # A click rate of about 0.1: anything useful beats the constant predictor by far
        # less than it beats a coin (log 2), so both bounds can fail.
        assert 0.2 < m["logloss"] < 0.45, name
        assert 0.5 < m["roc_auc"] <= 1.0, name
        assert m["events_per_s"] > 0 and m["seconds"] > 0
        assert len(m["rolling"]["end"]) == len(m["rolling"]["logloss"]) > 5
        assert f"| {name} " in run.stdout
    # The table prints the very numbers the JSON holds.
    assert f"{report['models']['deepfm']['logloss']:.4f}" in run.stdout


def test_default_demo_is_what_the_docs_promise():
    args = cli.parse_args([])
    assert args.command == "evaluate"
    assert args.model == ["river-lr", "river-fm", "deepfm"]
    assert (args.dataset, args.drift, args.n) == ("synthetic", "abrupt", cli.DEFAULT_N)
    assert (args.plot, args.json, args.scheduler, args.delay) == (None, None, None, 0)
    # Options alone also mean `evaluate` with the demo's models.
    assert cli.parse_args(["--n", "10"]).model == ["river-lr", "river-fm", "deepfm"]
    promised = ("LogisticRegression", "FMClassifier", "DeepFM", "synthetic", "abrupt", "river-torchrec --plot")
    pages = {
        ROOT / "README.md": promised,
        ROOT / "docs" / "index.md": (*promised, f"{cli.DEFAULT_N:,}"),
        ROOT / "docs" / "getting-started.md": (*promised, f"{cli.DEFAULT_N:,}"),
    }
    for page, words in pages.items():
        text = page.read_text().lower()
        for w in words:
            assert w.lower() in text, f"{page.name} does not mention {w!r}"


def _river_lr():
    return compose.TransformerUnion(
        compose.FuncTransformer(cli._categorical) | preprocessing.OneHotEncoder(drop_zeros=True),
        compose.FuncTransformer(cli._numeric) | preprocessing.StandardScaler(),
    ) | linear_model.LogisticRegression()


@pytest.mark.parametrize("delay", [0, 1, 7])
@pytest.mark.parametrize("make", [lambda: CTRClassifier(model="fm", seed=3), _river_lr], ids=["fm", "river-lr"])
def test_logloss_equals_progressive_val_score(make, delay):
    stream = SyntheticCTR(n_events=400, seed=5)
    ours = cli.progressive_evaluation(make(), stream, delay=delay)
    river_score = evaluate.progressive_val_score(stream, make(), metrics.LogLoss(), delay=delay or None)
    assert ours.logloss == river_score.get()
    assert ours.n_events == 400
    # The stored predictions give the same mean loss, and the exact AUC is sklearn's.
    assert log_loss(ours.y, ours.proba, labels=[False, True]) == pytest.approx(ours.logloss, rel=1e-9)
    assert ours.roc_auc == roc_auc_score(ours.y, ours.proba)


def test_delay_changes_what_the_model_knows():
    stream = SyntheticCTR(n_events=300, seed=2)
    now = cli.progressive_evaluation(CTRClassifier(model="lr", seed=1), stream, delay=0)
    late = cli.progressive_evaluation(CTRClassifier(model="lr", seed=1), stream, delay=50)
    # The first 50 predictions come from the untrained model: exactly 0.5 for LR.
    assert np.all(late.proba[:50] == 0.5)
    assert not np.all(now.proba[1:50] == 0.5)
    assert late.logloss != now.logloss


def test_rolling_metrics_are_windowed_exact_metrics():
    rng = np.random.default_rng(0)
    y = rng.random(530) < 0.3
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.2, 530), 0.01, 0.99)
    ends, loss, auc = cli.rolling_metrics(y, p, window=100, stride=40)
    assert ends.tolist() == [*range(40, 521, 40), 530]
    for end, got_loss, got_auc in zip(ends, loss, auc):
        start = max(end - 100, 0)
        assert got_loss == pytest.approx(log_loss(y[start:end], p[start:end], labels=[False, True]))
        assert got_auc == pytest.approx(roc_auc_score(y[start:end], p[start:end]))


def test_schedulers_are_found_by_name():
    from river_torchrec.optim import schedulers

    names = cli.scheduler_classes()
    assert names["constant"] is schedulers.Constant
    assert set(names.values()) == {
        getattr(schedulers, a) for a in schedulers.__all__ if a != "Scheduler"
    }
    if hasattr(schedulers, "DriftAwareLR"):
        assert names["drift-aware"] is schedulers.DriftAwareLR


def test_file_dataset_needs_data(capsys):
    assert cli.main(["--dataset", "criteo", "--n", "10", "--quiet"]) == 1
    assert capsys.readouterr().err == (
        "river-torchrec: error: --dataset criteo needs --data PATH: the criteo data may not be redistributed, "
        "so it is never downloaded; point --data at your copy\n"
    )
    assert cli.main(["--dataset", "avazu", "--data", "nowhere.txt", "--n", "10", "--quiet"]) == 1
    assert capsys.readouterr().err == "river-torchrec: error: --data nowhere.txt does not exist\n"


def test_criteo_file_from_a_folder(tmp_path, capsys):
    rows = []
    for i in range(60):
        ints = [str(i % 7)] + [""] * 12
        cats = ["aaaaaaaa" if i % 3 else "bbbbbbbb"] + [""] * 25
        rows.append("\t".join([str(int(i % 3 == 0)), *ints, *cats]))
    (tmp_path / "train.txt").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert cli.main(["--dataset", "criteo", "--data", str(tmp_path), "--n", "100", "--model", "lr",
                     "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # The file has 60 rows: the stream ends early, and says so.
    assert report["models"]["lr"]["n_events"] == 60
    assert "ended after 60 events" in capsys.readouterr().err
    assert math.isfinite(report["models"]["lr"]["logloss"])
