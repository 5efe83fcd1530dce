"""``river-torchrec evaluate --task rank``, run as a user would: the real entry point."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from helpers import markdown_rows


def _run(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "river_torchrec", "evaluate", "--task", "rank", "--quiet", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )


def test_synthetic_default_rankers_table_plot_json(tmp_path: pathlib.Path):
    plot, out = tmp_path / "rolling.png", tmp_path / "rank.json"
    run = _run("--n", "300", "--n-users", "40", "--n-items", "30", "--window", "100",
               "--plot", str(plot), "--json", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "SyntheticInteractions (300 choices, taste shift at 150)" in run.stdout
    assert "full catalogue (every item seen so far), seen items excluded: 300 queries" in run.stdout
    rows = markdown_rows(run.stdout, "model")
    names = ["oracle (true preferences)", "MostPopular", "river BiasedMF",
             "TwoTowerRanker (river-torchrec)"]
    assert all(name in rows for name in names), run.stdout
    for name in names:
        hr, ndcg, mrr, coverage = (float(v) for v in rows[name][:4])
        assert 0 <= ndcg <= hr <= 1 and 0 < mrr <= 1 and 0 < coverage <= 1
        assert float(rows[name][4].replace(",", "")) > 0
    assert float(rows["oracle (true preferences)"][0]) > float(rows["MostPopular"][0])
    assert plot.stat().st_size > 10_000
    data = json.loads(out.read_text())
    assert data["n_queries"] == 300 and set(data["models"]) == set(names)
    assert data["models"]["MostPopular"]["hit_rate@10"] == pytest.approx(
        float(rows["MostPopular"][0]), abs=1e-4
    )


def test_movielens_from_data_and_ranker_choice(tmp_path: pathlib.Path, capsys):
    # A made-up miniature in the GroupLens layout: 3 users each rating 10 movies once.
    ratings = "".join(f"{1 + t % 3}\t{1 + t // 3}\t{1 + t % 5}\t{900000000 + t}\n"
                      for t in range(30))
    (tmp_path / "u.data").write_text(ratings)
    (tmp_path / "u.user").write_text("1|30|F|writer|12345\n2|41|M|doctor|98765\n3|25|M|artist|55555\n")
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    (tmp_path / "u.item").write_text(
        "".join(f"{i}|Movie {i}|01-Jan-199{i % 10}|||{flags}\n" for i in range(1, 11))
    )
    from river_torchrec.cli import main  # in-process: the subprocess path is tested above

    assert main(["evaluate", "--task", "rank", "--quiet", "--dataset", "movielens", "--data",
                 str(tmp_path), "--ranker", "most-popular", "--ranker", "river-funkmf"]) == 0
    stdout = capsys.readouterr().out
    assert "MovieLens-100K (30 ratings in time order, positives: rating >= 4)" in stdout
    assert "12 queries over 30 events" in stdout and "0 repeats skipped" in stdout
    rows = markdown_rows(stdout, "model")
    assert set(rows) == {"MostPopular", "river FunkMF"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "criteo"], "--task rank works on --dataset synthetic or movielens, not criteo"),
        (["--dataset", "movielens"], "--dataset movielens needs --data PATH"),
        (["--dataset", "movielens", "--data", "nowhere"], "nowhere"),
        (["--plot", "missing/x.png"], "folder missing does not exist (for missing/x.png)"),
    ],
)
def test_errors_are_one_line(tmp_path: pathlib.Path, monkeypatch, capsys, args, message):
    # In-process (the same main() as the console script), so that the error cases stay fast.
    from river_torchrec.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--task", "rank", "--quiet", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("river-torchrec: error: ") and message in err
    assert err.count("\n") == 1
