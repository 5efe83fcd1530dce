"""Whole-pipeline checkpoints: bit-identical resume, clear refusals, verified files."""

from __future__ import annotations

import json
import re

import pytest
from river import base, compose, linear_model, multiclass, preprocessing

from river_torchrec import CTRClassifier, datasets, load_pipeline, save_pipeline
from river_torchrec.features import (
    DecayedCTREncoder,
    FeatureCrosser,
    FrequencyFilter,
    LogBucketizer,
    QuantileBinner,
    TimeContext,
)
from river_torchrec.persistence import CheckpointError

N, M = 400, 250


def _events(n: int) -> list[tuple[dict, bool]]:
    # A timestamp for TimeContext: one event a minute, from 2024-01-01.
    return [({**x, "ts": 1_704_067_200 + 60 * i}, y) for i, (x, y) in enumerate(datasets.SyntheticCTR(n_events=n, seed=7))]


EVENTS = _events(N + M)


def _ours() -> compose.Pipeline:
    """Every transformer of river_torchrec.features in front of a DeepFM."""
    return (
        TimeContext(timestamp_field="ts", user_field="user_id", item_field="item_id")
        | FrequencyFilter(min_count=2, fields=["user_id", "item_id"])
        | DecayedCTREncoder(fields=["item_id", "site"], half_life=100)
        | QuantileBinner(n_bins=4, fields=["price"], warm_up=50, refresh_every=100)
        | LogBucketizer(fields=["user_activity", "secs_since_user"])
        | FeatureCrosser([("user_segment", "item_category")])
        | CTRClassifier(model="deepfm", embedding_dim=4, hidden_units=(8,), seed=3)
    )


# Not compose.Select: it keeps its keys in a set, and a set rebuilt from its elements (by a
# checkpoint, or by pickle) may iterate in another order, which reorders the features and
# so the float sums of a river linear model (by an ulp). SelectType keeps the event's order.
def _river_steps() -> compose.Pipeline:
    """river's own transformers, joined by a TransformerUnion, before our classifier."""
    union = compose.TransformerUnion(
        compose.SelectType(str) | preprocessing.OneHotEncoder(drop_zeros=True),
        compose.SelectType(float) | preprocessing.StandardScaler(),
    )
    return union | CTRClassifier(model="fm", numeric="raw", embedding_dim=4, seed=3)


def _river_only() -> compose.Pipeline:
    return compose.SelectType(float) | preprocessing.StandardScaler() | linear_model.LogisticRegression()


def _same(a, b) -> bool:
    """Equal values of equal types all the way down, dict order included (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, (str, bytes, int, bool, type)) or a is None:
        return a == b
    # Any other object: the state pickle would save (its __dict__ and __slots__).
    return _same(a.__reduce_ex__(2)[2], b.__reduce_ex__(2)[2])


def _progressive(pipe, events) -> list[float]:
    out = []
    for x, y in events:
        out.append(pipe.predict_proba_one(x).get(True, 0.0))
        pipe.learn_one(x, y)
    return out


@pytest.mark.parametrize("make", [_ours, _river_steps, _river_only], ids=["ours", "river-transformers", "river-only"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(make, tmp_path):
    uninterrupted = make()
    _progressive(uninterrupted, EVENTS[:N])
    expected = _progressive(uninterrupted, EVENTS[N:])

    first = make()
    _progressive(first, EVENTS[:N])
    save_pipeline(first, tmp_path / "ckpt")
    del first
    resumed = load_pipeline(tmp_path / "ckpt")
    assert type(resumed) is compose.Pipeline
    assert list(resumed.steps) == list(make().steps)
    got = _progressive(resumed, EVENTS[N:])
    # Exactly equal predictions on every one of the M events after the resume.
    assert got == expected
    probe = [x for x, _ in EVENTS[:20]]
    assert [resumed.predict_proba_one(x) for x in probe] == [uninterrupted.predict_proba_one(x) for x in probe]


def test_the_state_of_every_step_is_restored(tmp_path):
    pipe = _ours()
    _progressive(pipe, EVENTS[:N])
    save_pipeline(pipe, tmp_path / "ckpt")
    loaded = load_pipeline(tmp_path / "ckpt")
    for (name, step), (name2, step2) in zip(pipe.steps.items(), loaded.steps.items()):
        assert name == name2 and type(step) is type(step2)
        if isinstance(step, CTRClassifier):
            continue
        assert _same(vars(step2), vars(step)), name
    x = EVENTS[N][0]
    assert loaded.transform_one(x) == pipe.transform_one(x)


def test_a_step_holding_a_function_is_refused_by_name_and_nothing_is_written(tmp_path):
    def only_strings(x):
        return {k: v for k, v in x.items() if isinstance(v, str)}

    pipe = compose.FuncTransformer(only_strings) | CTRClassifier(model="lr")
    with pytest.raises(CheckpointError) as info:
        save_pipeline(pipe, tmp_path / "ckpt")
    assert str(info.value) == (
        "step pipeline > 'only_strings' (FuncTransformer) cannot be saved safely: its attribute 'func' is the "
        "function 'test_a_step_holding_a_function_is_refused_by_name_and_nothing_is_written.<locals>.only_strings', "
        "and a checkpoint holds data, never code. Write the step as a transformer class, or rebuild it after loading"
    )
    assert not (tmp_path / "ckpt").exists() and list(tmp_path.iterdir()) == []


def test_an_object_the_encoding_cannot_hold_is_refused_naming_the_step(tmp_path):
    scaler = preprocessing.StandardScaler()
    scaler.hook = lambda: None  # code hidden in an attribute  # noqa: E731
    refused = r"^step pipeline > 'StandardScaler' \(StandardScaler\) cannot be saved safely: "
    with pytest.raises(CheckpointError, match=refused + "its attribute 'hook'"):
        save_pipeline(scaler | CTRClassifier(model="lr"), tmp_path / "ckpt")
    scaler = preprocessing.StandardScaler()
    scaler.handle = open(__file__)  # neither data nor a class
    try:
        with pytest.raises(CheckpointError, match=refused + r"StandardScaler\.handle"):
            save_pipeline(scaler | CTRClassifier(model="lr"), tmp_path / "ckpt")
    finally:
        scaler.handle.close()
    # A classifier hidden inside another object is not reachable by its own checkpoint.
    wrapped = preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(CTRClassifier(model="lr"))
    with pytest.raises(CheckpointError, match=re.escape(
        "step pipeline > 'OneVsRestClassifier' (OneVsRestClassifier) cannot be saved safely: "
        "OneVsRestClassifier.classifier is a CTRClassifier, which is saved only as a step of a compose.Pipeline "
        "or TransformerUnion, not inside another object"
    )):
        save_pipeline(wrapped, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_files_are_verified_and_the_formats_are_not_mixed_up(tmp_path):
    pipe = _river_steps()
    _progressive(pipe, EVENTS[:50])
    save_pipeline(pipe, tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [
        "extra.safetensors",
        "learner-0/config.json",
        "learner-0/extra.safetensors",
        "learner-0/state.json",
        "learner-0/updater.safetensors",
        "learner-0/weights.safetensors",
        "pipeline.json",
    ]
    # The classifier alone cannot be read as a pipeline, nor the pipeline as a classifier.
    with pytest.raises(CheckpointError, match="is the checkpoint of a whole pipeline: read it with river_torchrec.load_pipeline"):
        CTRClassifier.load(tmp_path / "ckpt")
    pipe["CTRClassifier"].save(tmp_path / "alone")
    with pytest.raises(CheckpointError, match="is the checkpoint of one estimator: read it with the estimator's load"):
        load_pipeline(tmp_path / "alone")
    # A modified file is caught before anything is rebuilt.
    state = tmp_path / "ckpt" / "pipeline.json"
    text = state.read_text()
    assert '"with_std": true' in text
    state.write_text(text.replace('"with_std": true', '"with_std": null'))
    with pytest.raises(CheckpointError, match=re.escape("checksum mismatch in pipeline.json")):
        load_pipeline(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "learner-0" / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="pipeline.json|missing file learner-0/weights.safetensors"):
        load_pipeline(tmp_path / "ckpt")


def test_saving_replaces_a_checkpoint_but_not_something_else(tmp_path):
    pipe = _river_only()
    _progressive(pipe, EVENTS[:30])
    save_pipeline(pipe, tmp_path / "ckpt")
    _progressive(pipe, EVENTS[30:60])
    save_pipeline(pipe, tmp_path / "ckpt")  # replaces the older one
    loaded = load_pipeline(tmp_path / "ckpt")
    x = EVENTS[70][0]
    assert loaded.predict_proba_one(x) == pipe.predict_proba_one(x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        save_pipeline(pipe, tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep"


class Shout(base.Transformer):  # a river transformer defined outside river
    def transform_one(self, x):
        return {k: v.upper() if isinstance(v, str) else v for k, v in x.items()}


def test_classes_outside_river_load_only_when_trusted(tmp_path):
    pipe = Shout() | CTRClassifier(model="lr")
    _progressive(pipe, EVENTS[:20])
    save_pipeline(pipe, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=rf"class {re.escape(Shout.__module__)}:Shout is not trusted"):
        load_pipeline(tmp_path / "ckpt")
    loaded = load_pipeline(tmp_path / "ckpt", trusted_classes=[Shout])
    x = EVENTS[30][0]
    assert loaded.predict_proba_one(x) == pipe.predict_proba_one(x)
