"""Checkpoints of a distributed run: the classifier, and how far each worker got in its shard."""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import pathlib
import shutil
from typing import Any

import torch

from river_torchrec.classifier import CTRClassifier

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint"]

_LATEST = "LATEST"
_PROGRESS = "progress.json"
_MODEL = "model"
_STATE = "state.pt"


def _has_persistence(clf: CTRClassifier) -> bool:
    return (
        callable(getattr(type(clf), "save", None))
        and callable(getattr(type(clf), "load", None))
        and importlib.util.find_spec("river_torchrec.persistence") is not None
    )


def classifier_state(clf: CTRClassifier) -> dict[str, Any]:
    """Everything a classifier learned, as tensors and plain containers only.

    It loads with ``torch.load(weights_only=True)``, which runs no pickled code. The
    hyper-parameters are not in it: the resumed job builds the classifier from the same
    configuration and loads this state into it.
    """
    table = clf.model_.embedding
    return {
        "n_fields": clf.model_.n_fields,
        "slots": list(clf._encoder.slots.items()),
        "model": clf.model_.state_dict(),
        "rows": list(table._rows.items()),
        "oov": list(table._oov.items()),
        "pending": list(table._pending.items()),
        "next_row": table._next_row,
        "n_draws": table._n_draws,
        "init_upto": table._init_upto,
        "updater": clf.updater.state_dict(),
        "n_rejected": clf.n_rejected_,
    }


def load_classifier_state(clf: CTRClassifier, state: dict[str, Any]) -> None:
    """Load :func:`classifier_state` into a classifier built with the same configuration."""
    clf._encoder.slots = dict(state["slots"])
    clf.model_.add_fields(state["n_fields"])
    table = clf.model_.embedding
    # The table may have grown: take the saved buffer as is before loading the rest.
    table.weight = state["model"]["embedding.weight"].to(table.weight.device)
    clf.model_.load_state_dict(state["model"])
    table.set_vocabulary(state["rows"])
    table._oov = dict(state["oov"])
    table._pending = collections.OrderedDict(state["pending"])
    table._next_row = state["next_row"]
    table._n_draws = state["n_draws"]
    table._init_upto = state.get("init_upto", max(table._next_row, table.capacity))
    clf.updater.load_state_dict(state["updater"])
    clf.n_rejected_ = state["n_rejected"]


def save_checkpoint(folder: str | os.PathLike, clf: CTRClassifier, progress: dict[str, Any], keep: int = 2) -> pathlib.Path:
    """Write ``folder/step-<n>/`` and then point ``folder/LATEST`` at it.

    The pointer is replaced atomically once the checkpoint is complete, so a crash while
    writing leaves the previous checkpoint in force. The classifier is written with
    ``CTRClassifier.save`` when the classifier has ``save``/``load``
    (:mod:`river_torchrec.persistence`), else as :func:`classifier_state` with ``torch.save``.
    Only the newest ``keep`` checkpoints are kept.
    """
    root = pathlib.Path(folder)
    name = f"step-{int(progress['n_steps']):09d}"
    target = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if _has_persistence(clf):
        clf.save(tmp / _MODEL)
    else:
        torch.save(classifier_state(clf), tmp / _STATE)
    (tmp / _PROGRESS).write_text(json.dumps(progress, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    pointer = root / f".{_LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / _LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: str | os.PathLike) -> pathlib.Path | None:
    """The folder of the newest complete checkpoint, or None."""
    pointer = pathlib.Path(folder) / _LATEST
    if not pointer.exists():
        return None
    return pathlib.Path(folder) / pointer.read_text().strip()


def load_checkpoint(
    folder: str | os.PathLike, clf: CTRClassifier
) -> tuple[CTRClassifier, dict[str, Any]] | None:
    """The classifier and the progress of the newest checkpoint in ``folder``, or None.

    A checkpoint written by ``torch.save`` is loaded into ``clf`` (with
    ``weights_only=True``); one written by ``CTRClassifier.save`` is loaded by
    ``CTRClassifier.load``, which returns a new classifier.
    """
    path = latest_checkpoint(folder)
    if path is None:
        return None
    progress = json.loads((path / _PROGRESS).read_text())
    if (path / _STATE).exists():
        state = torch.load(path / _STATE, map_location=clf.model_.embedding.weight.device, weights_only=True)
        load_classifier_state(clf, state)
    else:
        clf = type(clf).load(path / _MODEL, device=str(clf._device))
    return clf, progress
