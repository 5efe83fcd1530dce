"""Checkpoints of a whole river pipeline: every step's state in JSON and safetensors, never unpickled.

:meth:`CTRClassifier.save <river_torchrec.CTRClassifier.save>` stores the estimator alone;
the transformers in front of it (a :class:`~river_torchrec.features.DecayedCTREncoder`'s
click counts, a :class:`~river_torchrec.features.FrequencyFilter`'s counts, river's
``StandardScaler`` means...) learn too, and resuming without their state is resuming a
different pipeline. :func:`save_pipeline` writes all of it as a directory::

    ckpt/
      pipeline.json       the tree of steps: a Pipeline or TransformerUnion as its named
                          steps, any other step as its class and attributes
      extra.safetensors   tensors met in step attributes
      learner-0/          each river_torchrec estimator of the pipeline: the files of its
        config.json ...   own checkpoint (river_torchrec.persistence)
      manifest.json       size and SHA-256 of every file above, and of itself

A step's attributes use the tagged-JSON encoding of :mod:`river_torchrec.persistence`, and
loading imports classes only from ``river_torchrec`` and ``river`` (or ``trusted_classes``),
so a checkpoint can hold data but never code. The directory is written and swapped in
atomically, exactly as an estimator's checkpoint is, and every file is verified against the
manifest before anything is rebuilt.

A step that cannot be saved this way, because its state holds code (a
``compose.FuncTransformer``'s function, a lambda) or an object the encoding does not cover,
makes :func:`save_pipeline` raise :class:`~river_torchrec.persistence.CheckpointError` naming
the step and the attribute, before anything is written.

Examples
--------
>>> import tempfile
>>> from river import preprocessing
>>> from river_torchrec import CTRClassifier, datasets, load_pipeline, save_pipeline
>>> from river_torchrec.features import DecayedCTREncoder
>>> pipe = DecayedCTREncoder(fields=["item_id"]) | CTRClassifier(model="lr", seed=1)
>>> stream = list(datasets.SyntheticCTR(n_events=300, seed=1))
>>> for x, y in stream[:200]:
...     pipe.learn_one(x, y)
>>> with tempfile.TemporaryDirectory() as tmp:
...     save_pipeline(pipe, f"{tmp}/ckpt")
...     resumed = load_pipeline(f"{tmp}/ckpt")
>>> for x, y in stream[200:]:
...     pipe.learn_one(x, y)
...     resumed.learn_one(x, y)
>>> x = stream[0][0]
>>> resumed.predict_proba_one(x) == pipe.predict_proba_one(x)
True

"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from river import compose

from river_torchrec import persistence
from river_torchrec.learner import OnlineLearner
from river_torchrec.persistence import CheckpointError

__all__ = ["load_pipeline", "save_pipeline"]

PIPELINE = "pipeline.json"
EXTRA = "extra.safetensors"


def _is_code(v: Any) -> bool:
    return inspect.isroutine(v) or isinstance(v, functools.partial)


class _StepEncoder(persistence._Encoder):
    """Tagged JSON of a step's state; a learner or a torch module met inside a step is refused
    (it is saved through its own checkpoint only as a step of a Pipeline or TransformerUnion)."""

    def __call__(self, v: Any, where: str) -> Any:
        if isinstance(v, (OnlineLearner, torch.nn.Module)):
            raise CheckpointError(
                f"{where} is a {type(v).__name__}, which is saved only as a step of a compose.Pipeline "
                "or TransformerUnion, not inside another object"
            )
        return super().__call__(v, where)


class _Writer:
    """Walks a pipeline into the JSON tree of ``pipeline.json`` and the files of its learners."""

    def __init__(self) -> None:
        self.enc = _StepEncoder({})
        self.files: dict[str, bytes] = {}
        self.n_learners = 0

    def node(self, step: Any, where: str) -> dict:
        if type(step) is compose.Pipeline:
            return {"pipeline": [[name, self.node(s, f"{where} > {name!r}")] for name, s in step.steps.items()]}
        if type(step) is compose.TransformerUnion:
            return {"union": [[name, self.node(t, f"{where} > {name!r}")] for name, t in step.transformers.items()]}
        if isinstance(step, OnlineLearner):
            folder = f"learner-{self.n_learners}"
            self.n_learners += 1
            with getattr(step, "_lock", None) or contextlib.nullcontext():
                files = persistence._serialize(step)
            self.files.update({f"{folder}/{name}": data for name, data in files.items()})
            return {"learner": folder}
        kind = type(step).__name__
        for attr, value in vars(step).items() if hasattr(step, "__dict__") else ():
            if _is_code(value):
                raise CheckpointError(
                    f"step {where} ({kind}) cannot be saved safely: its attribute {attr!r} is the function "
                    f"{getattr(value, '__qualname__', value)!r}, and a checkpoint holds data, never code. "
                    "Write the step as a transformer class, or rebuild it after loading"
                )
        try:
            return {"step": self.enc(step, f"{kind}")}
        except CheckpointError as e:
            raise CheckpointError(f"step {where} ({kind}) cannot be saved safely: {e}") from None


class _Reader:
    def __init__(self, files: dict[str, bytes], device: str | None, trusted_classes: Sequence[type]) -> None:
        self.files = files
        self.device = device
        self.trusted_classes = trusted_classes
        classes = persistence._Classes(trusted_classes)
        tensors = {"extra": persistence._load_tensors(files, EXTRA)}
        self.dec = persistence._Decoder(classes, tensors, torch.device("cpu"))

    def node(self, node: Any, where: str) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            raise CheckpointError(f"{PIPELINE}: malformed step at {where}")
        ((kind, body),) = node.items()
        if kind == "pipeline":
            return compose.Pipeline(*[(name, self.node(s, f"{where} > {name!r}")) for name, s in body])
        if kind == "union":
            union = compose.TransformerUnion()
            # Set directly: adding a step would clone it, and a clone of a learner is another object.
            union.transformers = {name: self.node(t, f"{where} > {name!r}") for name, t in body}
            return union
        if kind == "learner":
            prefix = f"{body}/"
            files = {name.removeprefix(prefix): data for name, data in self.files.items() if name.startswith(prefix)}
            try:
                return persistence._from_files(files, self.device, self.trusted_classes)
            except CheckpointError as e:
                raise CheckpointError(f"step {where}: {body}: {e}") from e.__cause__
        if kind == "step":
            return self.dec(body, f"step {where}")
        raise CheckpointError(f"{PIPELINE}: unknown kind of step {kind!r} at {where}")


def save_pipeline(pipeline: Any, path: str | os.PathLike) -> None:
    """Write a checkpoint of a whole pipeline (or a single step) to the directory ``path``, atomically.

    Parameters
    ----------
    pipeline
        A river ``compose.Pipeline`` (``TransformerUnion`` steps included), or one
        transformer or estimator: our features and estimators, river's transformers and
        other river objects whose state is plain data.
    path
        The checkpoint directory. An existing ``path`` is replaced only if it is a
        checkpoint (or an empty directory).

    Raises
    ------
    CheckpointError
        If a step holds state that cannot be saved safely (a function, an unsupported
        object); the message names the step and the attribute, and nothing is written.

    """
    path = Path(path)
    persistence._check_replaceable(path)
    writer = _Writer()
    tree = writer.node(pipeline, "pipeline" if type(pipeline) is compose.Pipeline else type(pipeline).__name__)
    body = {"format_version": persistence.FORMAT_VERSION, "root": tree}
    files = {
        PIPELINE: persistence._json_bytes(body, indent=1),
        EXTRA: persistence._safetensors_bytes(writer.enc.tensors),
        **writer.files,
    }
    persistence._commit(path, files, persistence.PIPELINE_FORMAT)


def load_pipeline(
    path: str | os.PathLike, device: str | None = None, trusted_classes: Sequence[type] = ()
) -> Any:
    """Read a checkpoint written by :func:`save_pipeline`: the pipeline, in the state it was saved in.

    Parameters
    ----------
    path
        The checkpoint directory.
    device
        Device of the pipeline's river_torchrec estimators; each one's saved ``device`` if None.
    trusted_classes
        Classes outside ``river_torchrec`` and ``river`` that the checkpoint may name.

    Raises
    ------
    CheckpointError
        If a file is missing, truncated or modified, the format differs, a class is not
        trusted, or a step's contents do not fit.

    """
    path = persistence._locate(Path(path))
    files = persistence._read_verified(path, persistence.PIPELINE_FORMAT, names=None)
    try:
        body = json.loads(files[PIPELINE])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {PIPELINE} is missing or not valid JSON ({e})") from None
    if not isinstance(body, dict) or body.get("format_version") != persistence.FORMAT_VERSION:
        raise CheckpointError(f"{path}: {PIPELINE} is of another format version")
    try:
        return _Reader(files, device, trusted_classes).node(body["root"], "pipeline")
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e.__cause__
    except Exception as e:
        raise CheckpointError(f"{path}: the checkpoint does not fit: {type(e).__name__}: {e}") from e
