"""Checkpoints: exact resume (in this process and a fresh one), atomic replace, corruption, trust."""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from river_torchrec import CTRClassifier, datasets, optim, persistence
from river_torchrec.nn import CTRModel
from river_torchrec.optim.schedulers import DriftAwareLR
from river_torchrec.persistence import FILES, MANIFEST, CheckpointError

REPO = Path(__file__).resolve().parents[1]
EVENTS = list(datasets.SyntheticCTR(n_events=700, seed=5))
EVENTS_2000 = list(datasets.SyntheticCTR(n_events=2000, seed=5))

CONFIGS = {
    "deepfm-adam": lambda: {"model": "deepfm", "hidden_units": (16,), "embedding_dim": 4},
    "lr-ftrl": lambda: {"model": "lr", "optimizer": "ftrl", "numeric": "raw"},
    "fm-adagrad-hash": lambda: {"model": "fm", "optimizer": "adagrad", "embeddings": "hash", "n_buckets": 512},
    "widedeep-buffered-lru": lambda: {
        "model": "widedeep",
        "hidden_units": (8,),
        "batch_size": 7,
        "max_rows": 60,
        "min_count": 2,
        "clip_numeric": 10.0,
    },
    "dcnv2-osgd-drift": lambda: {
        "model": "dcnv2",
        "hidden_units": (8,),
        "embedding_dim": 4,
        "optimizer": optim.OSGD(lr=0.05, batch_size=4, buffer_size=32),
        "scheduler": DriftAwareLR(),
    },
}


def _weights_equal(a: CTRClassifier, b: CTRClassifier) -> bool:
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    if sa.keys() != sb.keys():
        return False
    ua, ub = a.updater.state_dict(), b.updater.state_dict()
    if ua.keys() != ub.keys():
        return False
    same_updater = all(
        torch.equal(ua[k], ub[k]) if isinstance(ua[k], torch.Tensor) else ua[k] == ub[k] for k in ua
    )
    return same_updater and all(torch.equal(sa[k], sb[k]) for k in sa)


def _run(model: CTRClassifier, events) -> list[float]:
    """Progressive validation: the prediction of each event, then learning it."""
    out = []
    for x, y in events:
        out.append(model.predict_proba_one(x)[True])
        model.learn_one(x, y)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_load_continues_bitwise_like_an_uninterrupted_run(tmp_path, name):
    saved, straight = CTRClassifier(**CONFIGS[name]()), CTRClassifier(**CONFIGS[name]())
    _run(saved, EVENTS[:400])
    expected = _run(straight, EVENTS)
    saved.save(tmp_path / "ckpt")
    loaded = CTRClassifier.load(tmp_path / "ckpt")
    assert _weights_equal(loaded, saved)
    assert _run(loaded, EVENTS[400:]) == expected[400:]
    assert _weights_equal(loaded, straight)
    assert loaded.n_rejected_ == straight.n_rejected_
    assert loaded._encoder.slots == straight._encoder.slots
    assert loaded.model_.embedding.key_to_row() == straight.model_.embedding.key_to_row()


RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from river_torchrec import CTRClassifier, datasets
    ckpt, out = sys.argv[1], sys.argv[2]
    events = list(datasets.SyntheticCTR(n_events=700, seed=5))[400:]
    model = CTRClassifier.load(ckpt)
    preds = []
    for x, y in events:
        preds.append(model.predict_proba_one(x)[True])
        model.learn_one(x, y)
    model.save(ckpt + "-after")
    json.dump(preds, open(out, "w"))
    """
)


def test_exact_resume_in_a_fresh_process(tmp_path):
    params = {"model": "deepfm", "hidden_units": (16,), "embedding_dim": 4, "scheduler": DriftAwareLR()}
    first = CTRClassifier(**params)
    _run(first, EVENTS[:400])
    first.save(tmp_path / "ckpt")
    straight = CTRClassifier(**{**params, "scheduler": DriftAwareLR()})
    expected = _run(straight, EVENTS)

    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    out = tmp_path / "preds.json"
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt"), str(out)],
        check=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    # JSON floats round-trip exactly, so this is a bitwise comparison.
    assert json.loads(out.read_text()) == expected[400:]
    resumed = CTRClassifier.load(tmp_path / "ckpt-after")
    assert _weights_equal(resumed, straight)
    assert resumed.scheduler.n_events == straight.scheduler.n_events == len(EVENTS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_saved_on_cuda_loads_on_cpu_and_back(tmp_path):
    params = {"model": "deepfm", "hidden_units": (16,), "embedding_dim": 4}
    gpu = CTRClassifier(**params, device="cuda")
    _run(gpu, EVENTS[:300])
    gpu.save(tmp_path / "gpu")
    cpu = CTRClassifier.load(tmp_path / "gpu", device="cpu")
    assert cpu.model_.embedding.weight.device.type == "cpu" and cpu.device == "cpu"
    for key, t in gpu.model_.state_dict().items():
        assert torch.equal(t.cpu(), cpu.model_.state_dict()[key])
    for x, _ in EVENTS[300:350]:
        assert cpu.predict_proba_one(x)[True] == pytest.approx(gpu.predict_proba_one(x)[True], abs=1e-5)
    _run(cpu, EVENTS[300:400])
    cpu.save(tmp_path / "cpu")
    back = CTRClassifier.load(tmp_path / "cpu", device="cuda")
    assert back.model_.embedding.weight.device.type == "cuda"
    _run(back, EVENTS[400:450])
    for x, _ in EVENTS[450:500]:
        assert back.predict_proba_one(x)[True] == pytest.approx(
            CTRClassifier.load(tmp_path / "cpu").predict_proba_one(x)[True], abs=0.05
        )


def test_device_argument_overrides_the_saved_device(tmp_path):
    model = CTRClassifier(model="fm", embedding_dim=4)
    _run(model, EVENTS[:50])
    model.save(tmp_path / "ckpt")
    # Make it a checkpoint of a CUDA model, re-signed as save() would have signed it.
    files = {name: (tmp_path / "ckpt" / name).read_bytes() for name in FILES}
    config = json.loads(files["config.json"])
    config["params"]["device"] = "cuda"
    files["config.json"] = persistence._json_bytes(config, indent=2)
    for name, data in {**files, MANIFEST: persistence._manifest_bytes(files)}.items():
        (tmp_path / "ckpt" / name).write_bytes(data)
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="device 'cuda'.*device='cpu'"):
            CTRClassifier.load(tmp_path / "ckpt")
    loaded = CTRClassifier.load(tmp_path / "ckpt", device="cpu")
    assert loaded.device == "cpu" and loaded.model_.embedding.weight.device.type == "cpu"
    assert _weights_equal(loaded, model)


def _checkpoint(tmp_path: Path) -> Path:
    model = CTRClassifier(model="fm", embedding_dim=4)
    _run(model, EVENTS[:50])
    model.save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.parametrize("name", [*FILES, MANIFEST])
def test_a_flipped_byte_in_any_file_is_detected(tmp_path, name):
    ckpt = _checkpoint(tmp_path)
    data = bytearray((ckpt / name).read_bytes())
    for position in (0, len(data) // 2, len(data) - 2):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        (ckpt / name).write_bytes(damaged)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            CTRClassifier.load(ckpt)
    (ckpt / name).write_bytes(data)
    CTRClassifier.load(ckpt)


@pytest.mark.parametrize("name", FILES)
def test_truncated_and_missing_files_are_named(tmp_path, name):
    ckpt = _checkpoint(tmp_path)
    data = (ckpt / name).read_bytes()
    (ckpt / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{name}.*truncated"):
        CTRClassifier.load(ckpt)
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing file {name}"):
        CTRClassifier.load(ckpt)


def test_missing_manifest_and_missing_checkpoint(tmp_path):
    ckpt = _checkpoint(tmp_path)
    (ckpt / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="missing manifest.json"):
        CTRClassifier.load(ckpt)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        CTRClassifier.load(tmp_path / "nothing-here")


def test_another_format_version_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_bytes())
    manifest["format_version"] = persistence.FORMAT_VERSION + 1
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format version 2.*reads version 1"):
        CTRClassifier.load(ckpt)


class Tiny(CTRModel):
    """A model class outside the trusted modules."""

    def __init__(self, embedding_dim=8, hidden_units=(), table=None, **kwargs):
        super().__init__(embedding_dim=embedding_dim, table=table)

    def forward(self, ids, values):
        linear, factors = self.rows(ids, values)
        return self.bias + linear.sum(1) + factors.sum((1, 2))


def test_classes_outside_the_allow_list_need_trusted_classes(tmp_path):
    model = CTRClassifier(model=Tiny, embedding_dim=3)
    _run(model, EVENTS[:50])
    model.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="Tiny is not trusted"):
        CTRClassifier.load(tmp_path / "ckpt")
    loaded = CTRClassifier.load(tmp_path / "ckpt", trusted_classes=[Tiny])
    assert _weights_equal(loaded, model)
    # A tampered class name is refused before its module is imported.
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["params"]["model"] == {"$type": f"{Tiny.__module__}:Tiny"}


def test_untrusted_module_is_never_imported(tmp_path):
    ckpt = _checkpoint(tmp_path)
    classes = persistence._Classes([])
    with pytest.raises(CheckpointError, match="not trusted"):
        classes.resolve("os:system", "test")
    with pytest.raises(CheckpointError, match="not trusted"):
        classes.resolve("no_such_module_for_sure:Thing", "test")
    assert CTRClassifier.load(ckpt) is not None


def test_interrupted_replace_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = CTRClassifier(model="lr")
    _run(model, EVENTS[:20])
    model.save(tmp_path / "ckpt")
    previous = copy.deepcopy(model)
    _run(model, EVENTS[20:40])

    real_rename = os.rename

    def crash_after_moving_the_old_one_aside(src, dst):
        real_rename(src, dst)
        if str(dst).endswith(".old"):
            raise KeyboardInterrupt("killed between the two renames")

    monkeypatch.setattr(os, "rename", crash_after_moving_the_old_one_aside)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "ckpt")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (tmp_path / "ckpt").exists()
    with pytest.warns(RuntimeWarning, match="interrupted"):
        recovered = CTRClassifier.load(tmp_path / "ckpt")
    assert _weights_equal(recovered, previous)
    model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert _weights_equal(CTRClassifier.load(tmp_path / "ckpt"), model)


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from river_torchrec import CTRClassifier, datasets
    events = list(datasets.SyntheticCTR(n_events=2000, seed=5))
    model = CTRClassifier(model="fm", embedding_dim=16)
    for i, (x, y) in enumerate(events):
        model.learn_one(x, y)
        model.save(sys.argv[1])
        if i == 0:
            print("saving", flush=True)
    """
)


def test_kill_during_save_never_leaves_a_broken_checkpoint(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    ckpt = tmp_path / "ckpt"
    rng = random.Random(0)
    reference = CTRClassifier(model="fm", embedding_dim=16)
    n_learned = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ckpt)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the backup may be what is left
            loaded = CTRClassifier.load(ckpt)
        n = loaded.updater.n_steps
        assert n >= 1
        # It is a complete checkpoint: the model after exactly n events, bit for bit.
        if n < n_learned:
            reference, n_learned = CTRClassifier(model="fm", embedding_dim=16), 0
        for x, y in EVENTS_2000[n_learned:n]:
            reference.learn_one(x, y)
        n_learned = n
        assert _weights_equal(loaded, reference)



def test_save_refuses_to_replace_something_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        CTRClassifier(model="lr").save(tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "do not delete"


def test_keys_of_every_kind_round_trip(tmp_path):
    model = CTRClassifier(model="fm", embedding_dim=3, min_count=2, max_rows=40)
    events = [
        ({"user": "u1", 7: True, ("t", 2): "z", "$tag": "$v", "\ud800": "é\x00", "n": 2.5}, True),
        ({"user": "u2", 7: False, ("t", 2): "True", "$tag": None, "n": -1}, False),
        ({"user": "x" * 10_000, 7: True, "n": 0.0}, True),
    ] * 3
    for x, y in events:
        model.learn_one(x, y)
    model.save(tmp_path / "ckpt")
    loaded = CTRClassifier.load(tmp_path / "ckpt")
    table, loaded_table = model.model_.embedding, loaded.model_.embedding
    assert list(loaded_table._rows.items()) == list(table._rows.items())  # recency order too
    assert loaded_table._oov == table._oov and list(loaded_table._pending.items()) == list(table._pending.items())
    assert loaded._encoder.slots == model._encoder.slots
    assert {type(f) for f in loaded._encoder.slots} == {str, int, tuple}
    for x, _ in events:
        assert loaded.predict_proba_one(x) == model.predict_proba_one(x)


def test_buffered_events_are_saved_and_flushed_after_loading(tmp_path):
    model = CTRClassifier(model="fm", batch_size=10)
    _run(model, EVENTS[:25])
    assert len(model._buffer) == 5
    model.save(tmp_path / "ckpt")
    loaded = CTRClassifier.load(tmp_path / "ckpt")
    assert loaded._buffer == model._buffer
    loaded.flush()
    model.flush()
    assert _weights_equal(loaded, model)


def test_unsavable_state_raises_and_writes_nothing(tmp_path):
    model = CTRClassifier(model="lr")
    model.scheduler_note = lambda: None  # an attribute no checkpoint can hold
    with pytest.raises(CheckpointError, match="scheduler_note"):
        model.save(tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_pickle_deepcopy_and_clone_still_work():
    model = CTRClassifier(model="deepfm", hidden_units=(8,), embedding_dim=4)
    _run(model, EVENTS[:50])
    x = EVENTS[60][0]
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), model.clone(include_attributes=True)):
        assert twin.predict_proba_one(x) == model.predict_proba_one(x)
        assert twin._lock is not model._lock
        twin.learn_one(x, True)
    fresh = model.clone()
    assert fresh.predict_proba_one(x) == CTRClassifier(model="deepfm", hidden_units=(8,), embedding_dim=4).predict_proba_one(x)


def test_compact_vocabulary_kinds_survive_a_checkpoint_and_resume_bitwise(tmp_path):
    # Hashed hex ids, numbered ids (with and without the field's zero padding) and free text
    # take different places in the KeyTable; a checkpoint must give each back exactly.
    def event(i: int) -> dict:
        return {"h": f"{(i * 2654435761) % 2**32:08x}", "u": f"u{i % 300}", "p": f"p{i % 50:04d}",
                "t": f"text {i % 70} é", "d": "007" if i % 2 else "7"}

    stream = [(event(i), i % 3 == 0) for i in range(600)]
    straight = CTRClassifier(model="fm", embedding_dim=3, seed=2)
    first = CTRClassifier(model="fm", embedding_dim=3, seed=2)
    for x, y in stream[:300]:
        straight.learn_one(x, y)
        first.learn_one(x, y)
    first.save(tmp_path / "ckpt")
    loaded = CTRClassifier.load(tmp_path / "ckpt")
    table, loaded_table = first.model_.embedding._rows, loaded.model_.embedding._rows
    assert list(loaded_table.items()) == list(table.items())
    assert loaded_table._meta[: len(table) + 8].tolist() == table._meta[: len(table) + 8].tolist()
    kinds = {int(m) & 15 for m in table._meta.tolist() if m}
    assert kinds >= {1, 6, 7, 8}  # text, hex, number, padded number
    for x, y in stream[300:]:
        straight.learn_one(x, y)
        loaded.learn_one(x, y)
    assert torch.equal(loaded.model_.embedding.weight, straight.model_.embedding.weight)
    assert loaded.model_.embedding.key_to_row() == straight.model_.embedding.key_to_row()
