"""The features subpackage is torch-free and exports its six transformers."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
from river import base

import river_torchrec.features as features

_PACKAGE_DIR = pathlib.Path(features.__file__).resolve().parent.parent


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    # A fresh interpreter: in this one, other test modules may have imported torch already.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_features_subpackage_is_torch_free():
    """No module of river_torchrec.features imports torch, whatever the parent package does.

    The parent package is replaced by an empty stand-in, so that only the subpackage's own
    imports are exercised; torch is also made unimportable, so any attempt fails loudly.
    """
    code = f"""
import sys, types
sys.modules["torch"] = None  # any `import torch` now raises ImportError
parent = types.ModuleType("river_torchrec")
parent.__path__ = [{str(_PACKAGE_DIR)!r}]
sys.modules["river_torchrec"] = parent
import river_torchrec.features as f
x = f.LogBucketizer().transform_one({{"a": 10}})
assert x == {{"a": "b5"}}, x
"""
    result = _run_fresh(code)
    assert result.returncode == 0, result.stderr


def test_import_does_not_import_torch():
    code = (
        "import sys\n"
        "import river_torchrec.features\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = _run_fresh(code)
    assert result.returncode == 0, result.stderr


def test_all_exports_the_six_transformers():
    assert sorted(features.__all__) == [
        "DecayedCTREncoder",
        "FeatureCrosser",
        "FrequencyFilter",
        "LogBucketizer",
        "QuantileBinner",
        "TimeContext",
    ]
    for name in features.__all__:
        cls = getattr(features, name)
        assert issubclass(cls, base.Transformer) or issubclass(cls, base.SupervisedTransformer)


def test_supervised_flags():
    # DecayedCTREncoder learns from labels. FrequencyFilter, TimeContext and QuantileBinner ignore
    # labels but say they are supervised so that river pipelines transform them before learning them.
    assert isinstance(features.DecayedCTREncoder(["a"]), base.SupervisedTransformer)
    assert isinstance(features.DecayedCTREncoder(["a"]), base.MiniBatchSupervisedTransformer)
    for cls in (features.FrequencyFilter, features.TimeContext, features.QuantileBinner):
        assert cls()._supervised
        assert isinstance(cls(), base.MiniBatchTransformer)
    for cls in (features.LogBucketizer,):
        assert not cls()._supervised
    assert not features.FeatureCrosser([("a", "b")])._supervised
