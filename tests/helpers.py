"""Small streams the tests generate themselves, and helpers for the benchmark smoke tests."""

from __future__ import annotations

import random


def pair_stream(n: int, seed: int = 0):
    """Clicks driven only by pairs of categorical fields: a linear model cannot fit them."""
    rng = random.Random(seed)
    for _ in range(n):
        a, b, c = rng.randrange(6), rng.randrange(6), rng.randrange(4)
        logit = 2.5 if (a + b) % 2 == 0 else -2.5
        logit += 1.5 if (c == a % 4) else 0.0
        p = 1 / (1 + pow(2.718281828, -logit))
        x = {"a": f"a{a}", "b": f"b{b}", "c": f"c{c}", "noise": rng.random()}
        yield x, rng.random() < p


def load_script(path, name: str):
    """Import a script (a benchmark) as a module, without running its ``main``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_rows(stdout: str, first_header: str) -> dict[str, list[str]]:
    """First cell -> the other cells of every row of the markdown tables in ``stdout``."""
    rows = {}
    for line in stdout.splitlines():
        if not line.startswith("| ") or line.startswith(f"| {first_header}") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def assert_same_state(a, b, rtol: float, atol: float) -> None:
    """Two estimators' model weights and updater state agree to ``rtol``/``atol``, key by key."""
    import torch

    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=rtol, atol=atol), k
    ua, ub = a.updater.state_dict(), b.updater.state_dict()
    assert ua.keys() == ub.keys()
    for k in ua:
        assert torch.allclose(torch.as_tensor(ua[k]), torch.as_tensor(ub[k]), rtol=rtol, atol=atol), k


def snapshot(clf) -> tuple[dict, dict]:
    """Copies of an estimator's model weights and updater state, for :func:`assert_unchanged`."""
    import torch

    return (
        {k: v.clone() for k, v in clf.model_.state_dict().items()},
        {k: torch.as_tensor(v).clone() for k, v in clf.updater.state_dict().items()},
    )


def assert_unchanged(clf, snap: tuple[dict, dict]) -> None:
    """The estimator's weights and updater state are bit for bit those of ``snap``."""
    import torch

    weights, state = snap
    for k, v in clf.model_.state_dict().items():
        assert torch.equal(v, weights[k]), k
    after = clf.updater.state_dict()
    assert after.keys() == state.keys()
    for k, v in after.items():
        assert torch.equal(torch.as_tensor(v), state[k]), k
