"""The command's edges, as a new user meets them (issue 18): the real entry point in a subprocess.

Each error is one line ``river-torchrec: error: ...`` on stderr, with a non-zero exit and no
traceback; a malformed record mid-stream still gives the table of what was evaluated.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from river_torchrec import cli
from river_torchrec.datasets import SyntheticCTR

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "river_torchrec", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def _error_only(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert run.stderr.strip().splitlines()[-1] == f"river-torchrec: error: {message}"


def _criteo_rows(n: int) -> list[str]:
    rows = []
    for i in range(n):
        ints = [str(i % 7)] + [""] * 12
        cats = ["aaaaaaaa" if i % 3 else "bbbbbbbb", f"c{i % 5}"] + [""] * 24
        rows.append("\t".join([str(int(i % 3 == 0)), *ints, *cats]))
    return rows


def _avazu_text(n: int) -> str:
    header = "id,click,hour,C1,banner_pos,site_id"
    return "\n".join([header] + [f"{i},{i % 2},14102100,1005,0,s{i % 4}" for i in range(n)]) + "\n"


# ------------------------------------------------------------------ data errors


def test_a_file_of_another_dataset_is_one_line_and_no_traceback(tmp_path):
    avazu = tmp_path / "avazu.csv"
    avazu.write_text(_avazu_text(20))
    run = _run("--dataset", "criteo", "--data", str(avazu), "--model", "lr", "--quiet")
    _error_only(run, f"{avazu}, line 1: expected 40 fields, got 6 (is --data a criteo file?)")
    assert run.stdout == ""


@pytest.mark.parametrize("dataset, content", [("criteo", ""), ("avazu", _avazu_text(0))], ids=["empty", "header-only"])
def test_zero_events_is_an_error_not_a_perfect_score(tmp_path, dataset, content):
    path = tmp_path / "train.csv"
    path.write_text(content)
    run = _run("--dataset", dataset, "--data", str(path), "--model", "lr", "--quiet")
    _error_only(run, f"{dataset.title()} (train.csv) holds no events (an empty file, or a header alone)")
    assert run.stdout == ""


@pytest.mark.parametrize("fault", ["short-row", "truncated-gz"])
def test_an_error_mid_stream_reports_the_table_so_far_and_where_it_stopped(tmp_path, fault):
    rows = _criteo_rows(300)
    if fault == "short-row":
        path = tmp_path / "train.txt"
        path.write_text("\n".join(rows[:120] + ["1\t2\t3"] + rows[120:]) + "\n")
        n_ok, reason = 120, f"{path}, line 121: expected 40 fields, got 3"
    elif fault == "not-a-number":
        bad = rows[200].split("\t")
        bad[1] = "seven"
        path = tmp_path / "train.txt"
        path.write_text("\n".join(rows[:200] + ["\t".join(bad)] + rows[201:]) + "\n")
        n_ok, reason = 200, f"{path}, line 201: column 'I1': expected a number, got 'seven'"
    else:
        data = gzip.compress(("\n".join(rows * 20) + "\n").encode())
        path = tmp_path / "train.txt.gz"
        path.write_bytes(data[: len(data) // 2])
        n_ok = None
        reason = None
    json_path = tmp_path / "out" / "r.json"
    run = _run("--dataset", "criteo", "--data", str(path), "--model", "lr", "--n", "100000", "--quiet",
               "--json", str(json_path))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    report = json.loads(json_path.read_text())
    n = report["models"]["lr"]["n_events"]
    if n_ok is None:  # the gzip stream ends somewhere in the middle of a line
        assert 0 < n < 6000
        assert last.startswith(
            f"river-torchrec: error: stopped early after {n:,} events: event {n + 1:,} could not be read: "
            f"{path}, line {n + 1}: corrupt or truncated file"
        )
    else:
        assert n == n_ok
        assert last == f"river-torchrec: error: stopped early after {n:,} events: event {n + 1:,} could not be read: {reason}"
    # The table of the events evaluated so far is printed, and says it is partial.
    assert f"{n:,} events (stopped early: see below)" in run.stdout
    assert f"| lr    |  {report['models']['lr']['logloss']:.4f} |" in run.stdout
    assert report["stream"]["stopped_early"] == last.removeprefix("river-torchrec: error: ")


def test_a_non_number_mid_stream_stops_every_model_at_the_same_event(tmp_path, capsys):
    rows = _criteo_rows(300)
    bad = rows[200].split("\t")
    bad[1] = "seven"
    path = tmp_path / "train.txt"
    path.write_text("\n".join(rows[:200] + ["\t".join(bad)] + rows[201:]) + "\n")
    assert cli.main(["--dataset", "criteo", "--data", str(path), "--model", "lr", "--model", "river-lr", "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1] == (
        f"river-torchrec: error: stopped early after 200 events: event 201 could not be read: {path}, line 201: "
        "column 'I1': expected a number, got 'seven'"
    )
    assert "200 events (stopped early: see below)" in out
    assert "| lr " in out and "| river-lr " in out


# ------------------------------------------------------------------ options


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_on_a_cpu_only_torch_is_a_clear_message():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    run = _run("--device", "cuda", "--n", "10", "--quiet")
    build = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
    _error_only(
        run,
        f"--device cuda: this PyTorch ({torch.__version__}) {build}; use --device cpu (or auto), or install a CUDA build of torch",
    )


def test_bad_device_and_option_combinations_fail_before_any_work(tmp_path):
    _error_only(_run("--device", "gpu0", "--quiet"), "--device gpu0: not a device; expected cpu, cuda, cuda:N, mps or auto")
    _error_only(_run("--vs-constant", "--quiet"), "--vs-constant compares a --scheduler with a constant rate: give --scheduler too")
    _error_only(
        _run("--drift-delta", "0.01", "--scheduler", "constant", "--quiet"),
        "--drift-delta sets the detector of --scheduler drift-aware: give --scheduler drift-aware",
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = _run("--plot", str(blocker / "new" / "demo.png"), "--quiet")
    _error_only(run, f"--plot {blocker / 'new' / 'demo.png'}: {blocker} is a file, not a folder")
    assert run.stdout == ""  # nothing was evaluated
    _error_only(_run("--json", str(tmp_path), "--quiet"), f"--json {tmp_path}: is a folder; give a file name")


def test_the_progress_bar_counts_the_file_and_outputs_go_into_new_folders(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("\n".join(_criteo_rows(60)) + "\n")
    out = tmp_path / "new" / "deeper" / "r.json"
    run = _run("--dataset", "criteo", "--data", str(data), "--model", "lr", "--n", "20000", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["models"]["lr"]["n_events"] == 60
    # The bars end at the file's 60 events, not at --n: "100%| ... 60/60".
    bars = run.stderr.replace("\r", "\n")
    assert any(line.strip().startswith("lr: 100%") and "60/60" in line for line in bars.splitlines()), bars
    assert "/20000" not in bars


def test_help_and_version_answer_without_importing_torch():
    for flag in ("--help", "--version"):
        run = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "river_torchrec", flag], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0
        imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
        assert not imported & {"torch", "river", "pandas", "sklearn", "matplotlib"}, flag
    run = _run("--help")
    text = " ".join(run.stdout.split())
    assert (
        "The options of 'evaluate' work without the word 'evaluate': 'river-torchrec --model fm --n 5000' is "
        "'river-torchrec evaluate --model fm --n 5000'." in text
    )
    assert _run("--version").stdout.strip() == f"river-torchrec {__import__('river_torchrec').__version__}"


def test_the_static_names_are_the_installed_ones():
    from river_torchrec.nn import MODELS
    from river_torchrec.optim import UPDATERS

    assert cli.OUR_MODELS == tuple(sorted(MODELS))
    assert cli.UPDATER_NAMES == tuple(sorted(UPDATERS))
    assert cli.SCHEDULER_NAMES == tuple(sorted(cli.scheduler_classes()))


# ------------------------------------------------------------------ report


def test_the_oracle_auc_is_in_the_table_and_the_json(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "figures" / "new" / "p.png"
    assert cli.main(["--n", "600", "--model", "lr", "--quiet", "--json", str(out), "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000  # into a folder that did not exist
    ds = SyntheticCTR(n_events=600, seed=42, drift="abrupt")
    y = np.array([bool(v) for _, v, _ in ds.iter_with_proba()])
    p = np.array([q for _, _, q in ds.iter_with_proba()])
    auc = roc_auc_score(y, p)
    stdout = capsys.readouterr().out
    row = next(line for line in stdout.splitlines() if line.startswith("| oracle"))
    assert [c.strip() for c in row.strip("|").split("|")][2] == f"{auc:.4f}"
    assert json.loads(out.read_text())["stream"]["oracle_roc_auc"] == pytest.approx(auc, abs=1e-12)


def test_drift_aware_against_a_constant_rate_with_its_sensitivity(tmp_path):
    out = tmp_path / "r.json"
    args = ["--model", "fm", "--scheduler", "drift-aware", "--vs-constant", "--n-users", "200", "--n-items", "50",
            "--positive-rate", "0.3", "--interaction-scale", "2", "--n", "6000", "--quiet", "--json", str(out)]
    assert cli.main(args) == 0
    report = json.loads(out.read_text())
    assert report["stream"]["drift_points"] == [3000]
    constant, boosted = report["models"]["fm"], report["models"]["fm+drift-aware"]
    assert constant["drift_alarms"] == [] and "lr_multiplier" not in constant["rolling"]
    # ADWIN's default sensitivity fires after the change, and only then: the multiplier is 1
    # before the alarm and boost * 2^(-(t - alarm) / half_life) after it (boost 8, half-life 2,000).
    (alarm,) = boosted["drift_alarms"]
    assert 3000 <= alarm < 4500
    for end, m in zip(boosted["rolling"]["end"], boosted["rolling"]["lr_multiplier"]):
        expected = 1.0 if end <= alarm + 1 else 1 + 7 * 2 ** (-(end - alarm - 1) / 2000)
        assert m == pytest.approx(expected, rel=1e-9), end
    # Up to the alarm, the two runs are the same run.
    n_before = sum(e <= alarm for e in constant["rolling"]["end"])
    assert boosted["rolling"]["logloss"][:n_before] == constant["rolling"]["logloss"][:n_before]
    # --drift-delta is ADWIN's delta.
    parsed = cli.parse_args([*args, "--drift-delta", "0.05"])
    assert cli.make_scheduler("drift-aware", parsed).detector.delta == 0.05
    assert cli.make_scheduler("drift-aware", cli.parse_args(args)).detector.delta == 0.002
