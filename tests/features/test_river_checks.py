"""River's estimator checks, run on every transformer with each of its `_unit_test_params`.

This is what `river.checks.check_estimator` runs (minus each class's documented
`_unit_test_skips`), one test per check so that a failure names its check.
"""

from __future__ import annotations

import copy

import pytest
from river import checks

from river_torchrec import features


def _estimators():
    for name in features.__all__:
        cls = getattr(features, name)
        for i, params in enumerate(cls._unit_test_params()):
            yield f"{name}[{i}]", cls(**params)


@pytest.mark.parametrize(
    "estimator, check",
    [
        pytest.param(estimator, check, id=f"{label}:{check.__name__}")
        for label, estimator in _estimators()
        for check in checks.yield_checks(estimator)
        if check.__name__ not in estimator._unit_test_skips()
    ],
)
def test_river_check(estimator, check):
    check(copy.deepcopy(estimator))

