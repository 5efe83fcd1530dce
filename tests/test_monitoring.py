"""Calibration and per-segment monitoring against scikit-learn and closed forms; the CLI options."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from river_torchrec import cli
from river_torchrec.monitoring import (
    RollingMonitor,
    expected_calibration_error,
    log_loss,
    plot_reliability,
    reliability_table,
    roc_auc,
    segment_report,
)


def _sample(n=2_000, seed=0, bias=0.0):
    rng = np.random.default_rng(seed)
    p = rng.beta(1.2, 6.0, n)
    y = rng.random(n) < np.clip(p + bias, 0, 1)
    return y, p


def test_reliability_table_matches_scikit_learn():
    y, p = _sample()
    table = reliability_table(y, p, n_bins=10, strategy="uniform")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(table["observed_rate"], prob_true, rtol=1e-12)
    np.testing.assert_allclose(table["mean_predicted"], prob_pred, rtol=1e-12)
    assert table["events"].sum() == len(y)


def test_ece_closed_forms():
    # Two bins, each with a known gap: |0.2 - 0| * 4 and |0.75 - 0.75| * 4 over 8 events.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.2, 0.3, 0.2, 0.8, 0.7, 0.9, 0.6])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.1, abs=1e-12)
    # A constant predictor: one bin, the gap between the prediction and the base rate.
    y, _ = _sample(seed=1)
    assert expected_calibration_error(y, np.full(len(y), 0.3), n_bins=10) == pytest.approx(abs(0.3 - y.mean()), abs=1e-12)
    # Predictions drawn as the labels' true probabilities are nearly calibrated; shifted ones are not.
    y, p = _sample(20_000, seed=2)
    assert expected_calibration_error(y, p, 10, "quantile") < 0.01
    assert expected_calibration_error(y, np.clip(p + 0.05, 0, 1), 10, "quantile") == pytest.approx(0.05, abs=0.01)


def test_quantile_bins_hold_equal_counts():
    y, p = _sample(1_000, seed=3)
    table = reliability_table(y, p, n_bins=5, strategy="quantile")
    assert table["events"].tolist() == [200] * 5


def test_segment_report_matches_scikit_learn_per_segment():
    y, p = _sample(3_000, seed=4)
    segs = np.where(np.arange(3_000) % 3 == 0, "tablet", np.where(np.arange(3_000) % 3 == 1, "mobile", "desktop"))
    segs[:10] = None
    report = segment_report(y, p, segs.tolist())
    assert report["events"].sum() == 3_000
    for row in report.itertuples():
        mask = np.array([s == row.segment for s in segs.tolist()])
        assert row.events == mask.sum()
        assert row.logloss == pytest.approx(sk_log_loss(y[mask], p[mask], labels=[0, 1]), rel=1e-9)
        assert row.auc == pytest.approx(roc_auc_score(y[mask], p[mask]), rel=1e-12)
        assert row.click_rate == pytest.approx(y[mask].mean())
    assert report["events"].is_monotonic_decreasing


def test_one_class_gives_nan_auc_and_bad_input_is_refused():
    assert math.isnan(roc_auc([1, 1], [0.2, 0.9]))
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="^y has 2 labels but p has 3 predictions$"):
        expected_calibration_error([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"^predictions must be probabilities in \[0, 1\] \(NaN is not one\)$"):
        expected_calibration_error([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="^labels must be 0/1 or bool$"):
        log_loss([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="^n_bins must be a positive integer, got 0$"):
        reliability_table([0, 1], [0.1, 0.2], n_bins=0)
    with pytest.raises(ValueError, match="^y has 2 labels but segments has 1 values$"):
        segment_report([0, 1], [0.1, 0.2], ["a"])


def test_rolling_monitor_csv_holds_the_trailing_windows(tmp_path):
    y, p = _sample(1_000, seed=5)
    segs = ["a" if i % 4 else "b" for i in range(1_000)]
    path = tmp_path / "metrics.csv"
    with RollingMonitor(path, window=300, every=250) as mon:
        for yi, pi, si in zip(y, p, segs):
            mon.update(yi, pi, si)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["event"]), r["segment"]) for r in rows] == [
        (e, s) for e in (250, 500, 750, 1000) for s in ("*", "a", "b")
    ]
    for r in rows:
        end = int(r["event"])
        lo = max(0, end - 300)
        mask = np.array([r["segment"] in ("*", s) for s in segs[lo:end]])
        wy, wp = y[lo:end][mask], p[lo:end][mask]
        assert int(r["events"]) == len(wy)
        assert float(r["logloss"]) == pytest.approx(sk_log_loss(wy, wp, labels=[0, 1]), rel=1e-9)
        assert float(r["auc"]) == pytest.approx(roc_auc_score(wy, wp), rel=1e-12)
    with pytest.raises(ValueError, match=r"^prediction must be a probability in \[0, 1\], got 1.5$"):
        RollingMonitor().update(1, 1.5)


def test_tensorboard_needs_its_package(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tensorboard_dir needs the optional 'tensorboard' package"):
            RollingMonitor(tensorboard_dir=tmp_path / "tb")
    else:
        with RollingMonitor(tensorboard_dir=tmp_path / "tb", window=10, every=10) as mon:
            for i in range(20):
                mon.update(i % 2, 0.5)
        assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_reliability_plot_is_a_png(tmp_path):
    y, p = _sample(500, seed=6)
    path = tmp_path / "rel.png"
    plot_reliability(y, p, path, groups={"shifted": (y, np.clip(p + 0.1, 0, 1))})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_calibration_segments_and_csv(tmp_path, capsys):
    png, out_csv = tmp_path / "cal.png", tmp_path / "m.csv"
    code = cli.main([
        "--model", "lr", "--n", "600", "--quiet", "--segment", "device",
        "--calibration", str(png), "--metrics-csv", str(out_csv), "--window", "200",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "lr: expected calibration error" in out
    assert "per 'device' (largest 3 of 3 segments)" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(out_csv.open()))
    assert {r["segment"] for r in rows} == {"*", "mobile", "desktop", "tablet"}
    assert int(rows[-1]["event"]) == 600


def test_cli_checkpoint_and_resume_give_the_uninterrupted_result(tmp_path, capsys):
    def lr_row(args):
        assert cli.main(["--model", "lr", "--n", "500", "--quiet", *args]) == 0
        return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| lr"))

    plain = lr_row([])
    ckpt = ["--checkpoint-every", "150", "--checkpoint", str(tmp_path / "ck")]
    first = lr_row(ckpt)
    assert first.split("|")[2:4] == plain.split("|")[2:4]  # LogLoss and AUC
    # Without --resume an existing checkpoint is refused; with it, nothing is learned twice.
    assert cli.main(["--model", "lr", "--n", "500", "--quiet", *ckpt]) == 1
    assert "holds a checkpoint: pass --resume to continue it" in capsys.readouterr().err
    again = lr_row([*ckpt, "--resume"])
    assert again.split("|")[2:4] == plain.split("|")[2:4]
    assert cli.main(["--model", "river-lr", "--n", "100", "--quiet", *ckpt]) == 1
    assert "--checkpoint-every saves our models only" in capsys.readouterr().err
