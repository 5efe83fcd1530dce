"""Checkpoints of a :class:`~river_torchrec.CTRClassifier`: safetensors and JSON, atomic, never unpickled.

A checkpoint is a directory::

    ckpt/
      config.json           constructor parameters, model class, field count, tensor shapes
      state.json            vocabulary, field slots, counters, event buffer, updater and
                            scheduler attributes, every module's plain attributes
      weights.safetensors   model.state_dict(), the embedding table buffer included
      updater.safetensors   the updater's state_dict() tensors (moments, accumulators, ...)
      extra.safetensors     any other tensor met in state.json (e.g. a scheduler's)
      manifest.json         format name and version, size and SHA-256 of every file above,
                            and the SHA-256 of the manifest itself

Loading it rebuilds an estimator that continues exactly where the saved one stopped: on CPU
with the same thread count, learning the same events gives bitwise the same weights and
predictions as a run that was never interrupted.

**Encoding.** JSON holds ``None``, ``bool``, ``int``, ``str`` and finite ``float`` as they
are and a list as a list; everything else is a one-key object whose key starts with ``$``,
so any value round-trips losslessly and a plain dict never collides with a tag:
``{"$tuple": [...]}``, ``{"$float": "nan"}``, ``{"$dict": [[key, value], ...]}`` (a dict
whose keys are not all plain strings), ``{"$odict": ...}``, ``{"$counter": ...}``, ``{"$set": ...}``,
``{"$bytes": base64}``, ``{"$tensor": "extra.safetensors:<key>"}``, ``{"$type":
"module:qualname"}`` (a class), ``{"$new": "module:qualname", "params": {...}}`` (an object
rebuilt by calling its class with ``params``: how ``config.json`` stores an ``optimizer``
or ``scheduler`` object), and ``{"$object": "module:qualname", "new": [...], "state": ...}``
(an object rebuilt as pickle would, but from JSON: ``cls.__new__`` and then
``__setstate__`` or its ``__dict__``; how ``state.json`` stores a scheduler's drift
detector, say). Vocabulary keys (field names and values: ``str``, ``bool``, ``None``,
``int``...) use the same encoding.

**Classes.** Loading imports a class by qualified name only when its module is in
:data:`TRUSTED_MODULES` (``river_torchrec`` and ``river``) or when the class itself is
passed in ``trusted_classes``; the module name is checked *before* anything is imported.
The plain types ``str``, ``int``, ``float``, ``bool``, ``bytes``, ``complex`` and the
``numbers`` ABCs are trusted too (a ``compose.SelectType(str)`` step names one).
A custom :class:`~river_torchrec.nn.CTRModel` subclass, updater or scheduler defined in
your own package therefore loads with ``load(path, trusted_classes=[MyModel])``.

**Atomic replace.** :func:`save` writes every file into a fresh ``.<name>.tmp-<pid>-<random>``
directory beside the target, fsyncs each file, writes the manifest last, fsyncs the
directory, and then, under a process-wide lock:

1. if ``<name>`` exists (it is always complete: it only ever appears by a rename), remove a
   stale ``.<name>.old`` and rename ``<name>`` to ``.<name>.old``; fsync the parent;
2. rename the temporary directory to ``<name>``; fsync the parent;
3. delete ``.<name>.old``.

A crash before step 2 leaves ``<name>`` (or, between steps 1 and 2, ``.<name>.old``) holding
the previous checkpoint, intact; after step 2, ``<name>`` holds the new one. :func:`load`
reads ``<name>``, or ``.<name>.old`` when ``<name>`` is missing (with a ``RuntimeWarning``),
so it always gets the previous or the new checkpoint, never a partial one. Leftover
temporary directories of dead processes are removed by the next save. Two processes must
not save to the same path at once.

**Verification.** Every file is read once, checked against its size and SHA-256 in the
manifest, and parsed from those same bytes. A missing, truncated or modified file, or
another format version, raises :class:`CheckpointError` naming it; so do classes that are
not trusted and contents that do not fit the rebuilt model.

Examples
--------
>>> import tempfile
>>> from river_torchrec import CTRClassifier, datasets
>>> model = CTRClassifier(model="fm", seed=1)
>>> for x, y in datasets.SyntheticCTR(n_events=200, seed=1):
...     model.learn_one(x, y)
>>> with tempfile.TemporaryDirectory() as tmp:
...     model.save(f"{tmp}/ckpt")
...     loaded = CTRClassifier.load(f"{tmp}/ckpt")
>>> x = {"user_id": "u1", "item_id": "i3", "price": 12.5}
>>> loaded.predict_proba_one(x) == model.predict_proba_one(x)
True

"""

from __future__ import annotations

import base64
import collections
import contextlib
import copyreg
import glob
import hashlib
import importlib
import inspect
import json
import math
import numbers
import os
import random
import secrets
import shutil
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from river import base

from river_torchrec.learner import OnlineLearner
from river_torchrec.nn import CTRModel, DynamicEmbedding

__all__ = ["CheckpointError", "FORMAT_VERSION", "TRUSTED_MODULES", "load", "save"]

#: Version of the checkpoint layout; :func:`load` reads this version only.
FORMAT_VERSION = 1
FORMAT = "river_torchrec.checkpoint"
#: Format name of whole-pipeline checkpoints (:mod:`river_torchrec.pipeline_checkpoint`).
PIPELINE_FORMAT = "river_torchrec.pipeline_checkpoint"
#: Modules whose classes :func:`load` may import without being told to.
TRUSTED_MODULES: tuple[str, ...] = ("river_torchrec", "river")

MANIFEST = "manifest.json"
FILES = ("config.json", "state.json", "weights.safetensors", "updater.safetensors", "extra.safetensors")

# Attributes of an estimator that are rebuilt or transient rather than saved.
_ESTIMATOR_SKIP = {"model_", "_updater", "_device", "_lock", "_memo", "_grad_hook"}
# What every torch module keeps in its __dict__ (weights are in the state dict).
_TORCH_MODULE_KEYS = frozenset(vars(torch.nn.Module()))
# DynamicEmbedding's vocabulary, saved in its own compact form.
_VOCAB_KEYS = frozenset({"_rows", "_oov", "_pending", "_recycled", "_next_row", "_n_draws"})
_DEFAULTDICT_FACTORIES = {f.__name__: f for f in (int, float, list, dict, set, str, bool)}

_SWAP_LOCK = threading.Lock()


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted, of another version, or untrusted."""


# ------------------------------------------------------------------- class names


def qualified_name(cls: type) -> str:
    """``"module:qualname"`` of a class that can be imported by that name."""
    name = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise CheckpointError(f"{name} cannot be imported by name; define it at the top level of a module")
    return name


#: Plain types a step may name as data (``compose.SelectType(str)``), trusted like our classes.
_SAFE_TYPES = {
    f"{t.__module__}:{t.__qualname__}": t
    for t in (str, int, float, bool, bytes, complex, numbers.Number, numbers.Real, numbers.Integral)
}


class _Classes:
    """Resolve ``"module:qualname"`` through the allow-list."""

    def __init__(self, trusted_classes: Iterable[type]) -> None:
        self.trusted = {}
        for cls in trusted_classes:
            if not isinstance(cls, type):
                raise TypeError(f"trusted_classes must hold classes, got {cls!r}")
            self.trusted[f"{cls.__module__}:{cls.__qualname__}"] = cls

    def resolve(self, name: Any, where: str, kind: type | None = None) -> type:
        if not isinstance(name, str) or name.count(":") != 1:
            raise CheckpointError(f"{where}: malformed class name {name!r}")
        cls = self.trusted.get(name) or _SAFE_TYPES.get(name)
        if cls is None:
            module, qualname = name.split(":")
            if not any(module == m or module.startswith(m + ".") for m in TRUSTED_MODULES):
                raise CheckpointError(
                    f"{where}: class {name} is not trusted; only classes from {', '.join(TRUSTED_MODULES)} "
                    "load by default: pass it in trusted_classes if you trust this checkpoint"
                )
            try:
                obj: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as e:
                raise CheckpointError(f"{where}: cannot import {name}: {e}") from None
            cls = obj
        if not isinstance(cls, type):
            raise CheckpointError(f"{where}: {name} is not a class")
        if kind is not None and not issubclass(cls, kind):
            raise CheckpointError(f"{where}: {name} is not a {kind.__name__}")
        return cls


# ---------------------------------------------------------------------- encoding


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Encoder:
    """Python values to tagged JSON; tensors go to ``extra.safetensors`` (or refer to a file)."""

    def __init__(self, refs: dict[int, str]) -> None:
        self.refs = dict(refs)  # id(tensor) -> "file:key" of tensors already saved
        self.tensors: dict[str, torch.Tensor] = {}
        self._keep: list[Any] = []  # keeps ids stable while encoding

    def tensor(self, t: torch.Tensor, where: str) -> dict:
        ref = self.refs.get(id(t))
        if ref is None:
            key = where if where not in self.tensors else f"{where}#{len(self.tensors)}"
            self.tensors[key] = t.detach().to("cpu").contiguous().clone()
            ref = self.refs[id(t)] = f"extra.safetensors:{key}"
            self._keep.append(t)
        return {"$tensor": ref}

    def __call__(self, v: Any, where: str) -> Any:
        t = type(v)
        if v is None or t is bool or t is int or t is str:
            return v
        if t is float:
            return v if math.isfinite(v) else {"$float": repr(v)}
        if t is list:
            return [self(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if t is tuple:
            return {"$tuple": [self(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if t is dict:
            if all(type(k) is str and not k.startswith("$") for k in v):
                return {k: self(x, f"{where}.{k}") for k, x in v.items()}
            return {"$dict": self._pairs(v, where)}
        if t is collections.OrderedDict:
            return {"$odict": self._pairs(v, where)}
        if t is collections.Counter:
            return {"$counter": self._pairs(v, where)}
        if t is collections.defaultdict:
            factory = v.default_factory
            if factory is not None and _DEFAULTDICT_FACTORIES.get(getattr(factory, "__name__", None)) is not factory:
                raise CheckpointError(f"{where}: a defaultdict of {factory!r} cannot be saved")
            name = None if factory is None else factory.__name__
            return {"$defaultdict": self._pairs(v, where), "factory": name}
        if t is collections.deque:
            return {"$deque": [self(x, f"{where}[{i}]") for i, x in enumerate(v)], "maxlen": v.maxlen}
        if t is set or t is frozenset:
            tag = "$set" if t is set else "$frozenset"
            return {tag: [self(x, f"{where}{{}}") for x in v]}
        if t is bytes:
            return {"$bytes": _b64(v)}
        if isinstance(v, torch.Tensor):
            return self.tensor(v, where)
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise CheckpointError(f"{where}: an object array cannot be saved")
            return {"$ndarray": _b64(np.ascontiguousarray(v).tobytes()), "dtype": v.dtype.str, "shape": list(v.shape)}
        if isinstance(v, np.generic):
            return {"$np": v.dtype.str, "value": self(v.item(), where)}
        if isinstance(v, torch.dtype):
            return {"$dtype": str(v).removeprefix("torch.")}
        if isinstance(v, torch.device):
            return {"$device": str(v)}
        if isinstance(v, torch.Generator):
            return {"$torch_generator": _b64(v.get_state().numpy().tobytes()), "device": str(v.device)}
        if t is random.Random:
            return {"$random": self(v.getstate(), where)}
        if isinstance(v, np.random.Generator):
            return {"$np_generator": type(v.bit_generator).__name__, "state": self(v.bit_generator.state, where)}
        if isinstance(v, type):
            return {"$type": qualified_name(v)}
        return self._object(v, where)

    def _pairs(self, d: dict, where: str) -> list:
        return [[self(k, f"{where}<key>"), self(x, f"{where}[{k!r:.40}]")] for k, x in d.items()]

    def _object(self, v: Any, where: str) -> dict:
        """An object as pickle would reduce it (protocol 2), restricted to a class and JSON data."""
        try:
            reduced = v.__reduce_ex__(2)
        except Exception as e:
            raise CheckpointError(f"{where}: {type(v).__name__} cannot be saved: {e}") from None
        if not isinstance(reduced, tuple) or len(reduced) < 2:
            raise CheckpointError(f"{where}: {type(v).__name__} cannot be saved (it reduces to {reduced!r:.60})")
        func, args, state, listitems, dictitems = (tuple(reduced) + (None,) * 5)[:5]
        if listitems is not None or dictitems is not None:
            raise CheckpointError(f"{where}: {type(v).__name__} cannot be saved (container subclass)")
        if func is copyreg.__newobj__:
            cls, args, how = args[0], args[1:], "new"
        elif isinstance(func, type):
            cls, how = func, "call"
        else:
            raise CheckpointError(f"{where}: {type(v).__name__} cannot be saved (it is rebuilt by {func!r:.60})")
        self._keep.append(v)
        return {
            "$object": qualified_name(cls),
            how: self(list(args), f"{where}.<args>"),
            "state": self(state, where),
        }

    def params(self, obj: base.Base, where: str) -> dict:
        """Constructor parameters; river objects among them as ``$new`` (class and parameters)."""
        out = {}
        for name, value in obj._get_params().items():
            if name == "_POSITIONAL_ARGS":
                raise CheckpointError(f"{where}: positional *args cannot be saved")
            if isinstance(value, tuple) and len(value) == 2 and inspect.isclass(value[0]) and isinstance(value[1], dict):
                out[name] = self.new(getattr(obj, name), f"{where}.{name}")
            else:
                out[name] = self(value, f"{where}.{name}")
        return out

    def new(self, obj: base.Base, where: str) -> dict:
        return {"$new": qualified_name(type(obj)), "params": self.params(obj, where)}

    def attributes(self, obj: Any, where: str, skip: Iterable[str] = ()) -> dict:
        """An object's ``__dict__``, but for ``skip``."""
        skip = set(skip)
        return {k: self(v, f"{where}.{k}") for k, v in vars(obj).items() if k not in skip}


class _Decoder:
    """Tagged JSON back to Python values."""

    def __init__(self, classes: _Classes, tensors: dict[str, dict[str, torch.Tensor]], device: torch.device) -> None:
        self.classes = classes
        self.tensors = tensors
        self.device = device

    def __call__(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self(x, where) for x in v]
        if not isinstance(v, dict):
            raise CheckpointError(f"{where}: unexpected {type(v).__name__}")
        tag = next(iter(v), None)
        if tag is None or not tag.startswith("$"):
            return {k: self(x, f"{where}.{k}") for k, x in v.items()}
        body = v[tag]
        try:
            return self._tagged(tag, body, v, where)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{where}: cannot decode {tag}: {type(e).__name__}: {e}") from e

    def _pairs(self, body: list, where: str) -> list[tuple]:
        return [(self(k, where), self(x, where)) for k, x in body]

    def _tagged(self, tag: str, body: Any, v: dict, where: str) -> Any:
        if tag == "$tuple":
            return tuple(self(x, where) for x in body)
        if tag == "$float":
            if body not in ("nan", "inf", "-inf"):
                raise CheckpointError(f"{where}: bad float {body!r}")
            return float(body)
        if tag == "$dict":
            return dict(self._pairs(body, where))
        if tag == "$odict":
            return collections.OrderedDict(self._pairs(body, where))
        if tag == "$counter":
            return collections.Counter(dict(self._pairs(body, where)))
        if tag == "$defaultdict":
            factory = v["factory"]
            if factory is not None and factory not in _DEFAULTDICT_FACTORIES:
                raise CheckpointError(f"{where}: defaultdict factory {factory!r} is not allowed")
            return collections.defaultdict(_DEFAULTDICT_FACTORIES.get(factory), self._pairs(body, where))
        if tag == "$deque":
            return collections.deque((self(x, where) for x in body), maxlen=v["maxlen"])
        if tag == "$set":
            return {self(x, where) for x in body}
        if tag == "$frozenset":
            return frozenset(self(x, where) for x in body)
        if tag == "$bytes":
            return base64.b64decode(body, validate=True)
        if tag == "$tensor":
            file, _, key = body.partition(":")
            try:
                return self.tensors[file.removesuffix(".safetensors")][key]
            except KeyError:
                raise CheckpointError(f"{where}: tensor {body!r} is missing") from None
        if tag == "$ndarray":
            data = base64.b64decode(body, validate=True)
            return np.frombuffer(data, dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
        if tag == "$np":
            return np.dtype(body).type(self(v["value"], where))
        if tag == "$dtype":
            dtype = getattr(torch, body, None)
            if not isinstance(dtype, torch.dtype):
                raise CheckpointError(f"{where}: unknown dtype {body!r}")
            return dtype
        if tag == "$device":
            return torch.device(body)
        if tag == "$torch_generator":
            gen = torch.Generator(device=v["device"])
            gen.set_state(torch.frombuffer(bytearray(base64.b64decode(body, validate=True)), dtype=torch.uint8))
            return gen
        if tag == "$random":
            rng = random.Random()
            rng.setstate(self(body, where))
            return rng
        if tag == "$np_generator":
            bit_gen = getattr(np.random, body, None)
            if not (isinstance(bit_gen, type) and issubclass(bit_gen, np.random.BitGenerator)):
                raise CheckpointError(f"{where}: unknown bit generator {body!r}")
            gen = bit_gen()
            gen.state = self(v["state"], where)
            return np.random.Generator(gen)
        if tag == "$type":
            return self.classes.resolve(body, where)
        if tag == "$new":
            cls = self.classes.resolve(body, where)
            return cls(**self(v["params"], where))
        if tag == "$object":
            cls = self.classes.resolve(body, where)
            if "new" in v:
                obj = cls.__new__(cls, *self(v["new"], where))
            else:
                obj = cls(*self(v["call"], where))
            state = self(v["state"], where)
            if state is not None:
                _set_state(obj, state)
            return obj
        raise CheckpointError(f"{where}: unknown tag {tag!r}")

    def attributes(self, attrs: Any, where: str) -> dict:
        if not isinstance(attrs, dict):
            raise CheckpointError(f"{where}: expected an object of attributes")
        return {k: self(x, f"{where}.{k}") for k, x in attrs.items()}


def _set_state(obj: Any, state: Any) -> None:
    """What pickle's BUILD does with a state."""
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    if state:
        obj.__dict__.update(state)
    for k, x in (slots or {}).items():
        setattr(obj, k, x)


# -------------------------------------------------------------------- vocabulary


def _vocabulary(table: DynamicEmbedding, enc: _Encoder, where: str) -> dict:
    def key(k: tuple) -> list:
        if type(k) is not tuple or len(k) != 2:
            raise CheckpointError(f"{where}: table key {k!r:.60} is not a (field, value) pair")
        f, v = k
        return [f if type(f) is str else enc(f, where), v if type(v) is str or v is None else enc(v, where)]

    return {
        "rows": [key(k) + [r] for k, r in table._rows.items()],  # in recency order
        "oov": [[enc(f, where), r] for f, r in table._oov.items()],
        "pending": [key(k) + [n] for k, n in table._pending.items()],
        "recycled": list(table._recycled),
        "next_row": table._next_row,
        "n_draws": table._n_draws,
    }


def _restore_vocabulary(table: DynamicEmbedding, voc: dict, dec: _Decoder, where: str) -> None:
    def key(f: Any, v: Any) -> tuple:
        return (f if type(f) is str else dec(f, where), v if type(v) is str or v is None else dec(v, where))

    table.set_vocabulary([(key(f, v), int(r)) for f, v, r in voc["rows"]])
    # Checkpoints from before rows were drawn lazily drew every allocated row.
    table._init_upto = max(table._init_upto, int(voc["next_row"]))
    table._oov = {dec(f, where): int(r) for f, r in voc["oov"]}
    table._pending = collections.OrderedDict((key(f, v), int(n)) for f, v, n in voc["pending"])
    table._recycled = [int(r) for r in voc["recycled"]]
    table._next_row = int(voc["next_row"])
    table._n_draws = int(voc["n_draws"])


# ------------------------------------------------------------------------- files


def _json_bytes(obj: Any, indent: int | None = None) -> bytes:
    return json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=True).encode("ascii")


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    try:
        return safetensors.torch.save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    except Exception:
        # Tensors sharing memory (tied weights) must be saved as separate copies.
        return safetensors.torch.save({k: t.clone() for k, t in tensors.items()})


def _serialize(model: OnlineLearner) -> dict[str, bytes]:
    net = model.model_
    weights = {k: t.detach().to("cpu").contiguous() for k, t in net.state_dict().items()}
    updater_state = model.updater.state_dict()
    updater_tensors = {k: t.detach().to("cpu").contiguous() for k, t in updater_state.items() if isinstance(t, torch.Tensor)}
    refs = {id(t): f"updater.safetensors:{k}" for k, t in updater_state.items() if isinstance(t, torch.Tensor)}
    enc = _Encoder(refs)

    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "estimator": qualified_name(type(model)),
        "params": enc.params(model, "params"),
        "model_class": qualified_name(type(net)),
        "n_fields": net.n_fields,
        "tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in weights.items()},
        "saved_on": str(model._device),
    }
    params = set(model._get_params())
    modules, vocabularies = {}, {}
    for name, module in net.named_modules():
        where = f"model.{name}" if name else "model"
        skip = _TORCH_MODULE_KEYS
        if isinstance(module, DynamicEmbedding):
            vocabularies[name] = _vocabulary(module, enc, where)
            skip = skip | _VOCAB_KEYS
        modules[name] = enc.attributes(module, where, skip)
    scheduler = model.scheduler
    state = {
        "format_version": FORMAT_VERSION,
        "estimator": enc.attributes(model, "estimator", params | _ESTIMATOR_SKIP),
        "modules": modules,
        "vocabularies": vocabularies,
        "updater": {
            "scalars": {k: enc(v, f"updater.{k}") for k, v in updater_state.items() if not isinstance(v, torch.Tensor)},
            "attributes": enc.attributes(model.updater, "updater", {"_state"}),
        },
        "scheduler": None if scheduler is None else enc.attributes(scheduler, "scheduler"),
    }
    return {
        "config.json": _json_bytes(config, indent=2),
        "state.json": _json_bytes(state),
        "weights.safetensors": _safetensors_bytes(weights),
        "updater.safetensors": _safetensors_bytes(updater_tensors),
        "extra.safetensors": _safetensors_bytes(enc.tensors),
    }


def _manifest_bytes(files: dict[str, bytes], fmt: str = FORMAT) -> bytes:
    body = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "files": {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()},
    }
    body["manifest_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
    return _canonical(body) + b"\n"


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes renames and new entries durable; directories cannot be opened on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _backup(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _check_replaceable(path: Path) -> None:
    """Refuse to write a checkpoint over anything but a checkpoint or an empty folder."""
    if path.exists() and not _is_checkpoint(path) and not (path.is_dir() and not any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not a checkpoint; refusing to replace it")


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _remove_dead_temporaries(path: Path) -> None:
    """Temporary directories left by saves whose process is gone."""
    if os.name != "posix":
        return
    for tmp in path.parent.glob(glob.escape(f".{path.name}.tmp-") + "*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def save(model: OnlineLearner, path: str | os.PathLike) -> None:
    """Write a checkpoint of ``model`` to the directory ``path``, atomically.

    The estimator's lock is held while its state is serialised (in memory), so a save
    taken while other threads learn is a consistent snapshot; the files are then written
    and swapped in as the module docstring describes. An existing ``path`` is replaced
    only if it is a checkpoint (or an empty directory).

    Raises
    ------
    CheckpointError
        If some part of the state cannot be saved (an attribute of an unsupported type, a
        class that cannot be imported by name); nothing is written then.

    """
    if not isinstance(model, OnlineLearner):
        raise TypeError(f"expected a CTRClassifier or a river_torchrec ranker, got {type(model).__name__}")
    path = Path(path)
    _check_replaceable(path)
    with getattr(model, "_lock", None) or contextlib.nullcontext():
        files = _serialize(model)
    _commit(path, files)


def _commit(path: Path, files: dict[str, bytes], fmt: str = FORMAT) -> None:
    """Write ``files`` (names relative to ``path``, ``/`` for sub-folders) and their manifest
    into a temporary directory, then swap it in for ``path`` as the module docstring says."""
    files = {**files, MANIFEST: _manifest_bytes(files, fmt)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        for name, data in files.items():  # the manifest last: it is what makes a checkpoint
            target = tmp / name
            if target.parent != tmp:
                target.parent.mkdir(parents=True, exist_ok=True)
            _write(target, data)
        for folder in sorted({(tmp / name).parent for name in files}, key=lambda f: -len(f.parts)):
            _fsync_dir(folder)
        with _SWAP_LOCK:
            backup = _backup(path)
            if path.exists():
                if backup.exists():
                    shutil.rmtree(backup)
                os.rename(path, backup)
                _fsync_dir(path.parent)
            os.rename(tmp, path)
            _fsync_dir(path.parent)
            if backup.exists():
                shutil.rmtree(backup)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------- loading


def _read_verified(path: Path, fmt: str = FORMAT, names: Sequence[str] | None = FILES) -> dict[str, bytes]:
    """Every file of the checkpoint at ``path``, checked against its manifest (format ``fmt``).

    ``names``: the files that must be listed; None reads every file the manifest lists.
    """
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing {MANIFEST}; not a checkpoint, or an incomplete one") from None
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise CheckpointError(f"{path}: {MANIFEST} is corrupted ({e})") from None
    if manifest.get("format") != fmt:
        found = manifest.get("format")
        if found in (FORMAT, PIPELINE_FORMAT):
            what = "a whole pipeline" if found == PIPELINE_FORMAT else "one estimator"
            reader = "river_torchrec.load_pipeline" if found == PIPELINE_FORMAT else "the estimator's load"
            raise CheckpointError(f"{path} is the checkpoint of {what}: read it with {reader}")
        raise CheckpointError(f"{path}: {MANIFEST} is corrupted or not a {fmt} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: {MANIFEST} says checkpoint format version {version!r}, but this river_torchrec reads "
            f"version {FORMAT_VERSION}"
        )
    digest = manifest.pop("manifest_sha256", None)
    if digest != hashlib.sha256(_canonical(manifest)).hexdigest() or raw != _manifest_self(manifest, digest):
        raise CheckpointError(f"{path}: {MANIFEST} is corrupted (checksum mismatch)")
    files = manifest.get("files")
    if names is None:
        names = list(files) if isinstance(files, dict) else []
        for name in names:
            parts = Path(name).parts
            if not isinstance(name, str) or Path(name).is_absolute() or ".." in parts or name == MANIFEST:
                raise CheckpointError(f"{path}: {MANIFEST} lists a file outside the checkpoint: {name!r}")
    out = {}
    for name in names:
        meta = files.get(name) if isinstance(files, dict) else None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: {MANIFEST} does not list {name}")
        try:
            data = (path / name).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing file {name}") from None
        if len(data) != meta.get("size"):
            raise CheckpointError(
                f"{path}: {name} is truncated or extended ({len(data)} bytes, the manifest says {meta.get('size')})"
            )
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise CheckpointError(f"{path}: checksum mismatch in {name}: the file was modified or corrupted")
        out[name] = data
    return out


def _manifest_self(manifest: dict, digest: str) -> bytes:
    return _canonical({**manifest, "manifest_sha256": digest}) + b"\n"


def _load_json(files: dict[str, bytes], name: str) -> dict:
    try:
        obj = json.loads(files[name])
    except ValueError as e:
        raise CheckpointError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name} does not hold a JSON object")
    return obj


def _load_tensors(files: dict[str, bytes], name: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(files[name])
    except Exception as e:
        raise CheckpointError(f"{name} is not a valid safetensors file: {e}") from None


def _fit_shapes(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Give every parameter and buffer the saved shape and dtype (tables and layers grow)."""
    own = net.state_dict(keep_vars=True)
    missing, unexpected = set(own) - set(weights), set(weights) - set(own)
    if missing or unexpected:
        raise CheckpointError(
            f"weights.safetensors does not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    for key, saved in weights.items():
        cur = own[key]
        if cur.shape == saved.shape and cur.dtype == saved.dtype:
            continue
        owner, _, attr = key.rpartition(".")
        module = net.get_submodule(owner)
        fresh = torch.empty(saved.shape, dtype=saved.dtype, device=cur.device)
        if isinstance(cur, torch.nn.Parameter):
            setattr(module, attr, torch.nn.Parameter(fresh, requires_grad=cur.requires_grad))
        else:
            setattr(module, attr, fresh)


def _locate(path: Path) -> Path:
    if path.exists():
        return path
    backup = _backup(path)
    if _is_checkpoint(backup):
        warnings.warn(
            f"{path} is missing but {backup.name} holds the previous checkpoint (a save was interrupted); "
            "loading it",
            RuntimeWarning,
        )
        return backup
    raise CheckpointError(f"no checkpoint at {path}")


def load(
    path: str | os.PathLike, device: str | None = None, trusted_classes: Sequence[type] = ()
) -> OnlineLearner:
    """Read a checkpoint written by :func:`save`.

    Parameters
    ----------
    path
        The checkpoint directory.
    device
        Where to put the model (``"cpu"``, ``"cuda"``, ...); the saved ``device``
        parameter if None. The loaded estimator's ``device`` parameter is set to it.
    trusted_classes
        Classes outside :data:`TRUSTED_MODULES` that the checkpoint may name: your own
        model, updater or scheduler classes.

    Raises
    ------
    CheckpointError
        If a file is missing, truncated or modified, the format version differs, a class
        is not trusted, or the contents do not fit the rebuilt model.

    """
    path = _locate(Path(path))
    files = _read_verified(path)
    try:
        return _from_files(files, device, trusted_classes)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e.__cause__


def _from_files(
    files: dict[str, bytes], device: str | None = None, trusted_classes: Sequence[type] = ()
) -> OnlineLearner:
    """The estimator of the (verified) checkpoint files ``config.json``, ``state.json``, ..."""
    config = _load_json(files, "config.json")
    state = _load_json(files, "state.json")
    if config.get("format_version") != FORMAT_VERSION or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError("config.json or state.json is of another format version")
    tensors = {
        "updater": _load_tensors(files, "updater.safetensors"),
        "extra": _load_tensors(files, "extra.safetensors"),
    }
    weights = _load_tensors(files, "weights.safetensors")
    classes = _Classes(trusted_classes)
    try:
        return _rebuild(config, state, weights, tensors, classes, device)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"the checkpoint does not fit: {type(e).__name__}: {e}") from e


def _rebuild(
    config: dict,
    state: dict,
    weights: dict[str, torch.Tensor],
    tensors: dict[str, dict[str, torch.Tensor]],
    classes: _Classes,
    device: str | None,
) -> OnlineLearner:
    cls = classes.resolve(config["estimator"], "config.json: estimator", OnlineLearner)
    classes.resolve(config["model_class"], "config.json: model_class", CTRModel)
    staging = _Decoder(classes, tensors, torch.device("cpu"))
    params = staging.attributes(config["params"], "config.json: params")
    if device is not None:
        params["device"] = device
    try:
        model = cls(**params)
    except (RuntimeError, AssertionError) as e:  # what torch raises for a device it lacks
        raise CheckpointError(
            f"cannot build the model on device {params.get('device')!r} ({e}); pass device='cpu' to load it here"
        ) from e
    target = model._device
    # Tensors met in attributes go where the model is.
    for group in tensors.values():
        for key, t in group.items():
            group[key] = t.to(target)
    dec = _Decoder(classes, tensors, target)

    net = model.model_
    # Growing first rebuilds whatever a model adds per field; shapes and values follow.
    net.add_fields(int(config["n_fields"]))
    _fit_shapes(net, weights)
    net.load_state_dict({k: t.to(target) for k, t in weights.items()}, strict=True)
    modules = dict(net.named_modules())
    for name, attrs in state["modules"].items():
        if name not in modules:
            raise CheckpointError(f"state.json: the model has no module {name!r}")
        modules[name].__dict__.update(dec.attributes(attrs, f"model.{name}"))
    for name, voc in state["vocabularies"].items():
        table = modules.get(name)
        if not isinstance(table, DynamicEmbedding):
            raise CheckpointError(f"state.json: {name!r} is not an embedding table")
        _restore_vocabulary(table, voc, dec, f"vocabulary of {name!r}")

    updater = model.updater
    updater_state: dict[str, Any] = dict(tensors["updater"])
    updater_state.update(dec.attributes(state["updater"]["scalars"], "updater"))
    updater.load_state_dict(updater_state)
    updater.__dict__.update(dec.attributes(state["updater"]["attributes"], "updater"))
    if state["scheduler"] is not None:
        if model.scheduler is None:
            raise CheckpointError("state.json holds a scheduler state but the parameters have no scheduler")
        model.scheduler.__dict__.update(dec.attributes(state["scheduler"], "scheduler"))
    model.__dict__.update(dec.attributes(state["estimator"], "estimator"))
    return model
