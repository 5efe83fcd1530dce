"""Small streams the tests generate themselves."""

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
