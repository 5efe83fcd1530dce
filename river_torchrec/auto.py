"""A CTR classifier that does no harm: an online mixture of the click rate, DeepFM and a fast FM.

No single model or learning rate serves every click log: on sparse logs where nearly every id
is new, every learned model loses to the running click rate; where ids repeat (a few users
seeing a few items again and again) the default step size is several times too small; in
between, DeepFM at a small step wins. :class:`AutoCTRClassifier` runs one of each and mixes
their probabilities by Bayes' rule on log loss (:class:`~river_torchrec.mixture.OnlineMixture`),
so its cumulative log loss is provably within ``log 3`` (plus the fixed-share term) of the
best of the three on every stream.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import pandas as pd
import torch
from river import base

from river_torchrec.classifier import CTRClassifier
from river_torchrec.defence import PoisoningDefence, resolve_defence
from river_torchrec.labels import binary_label, frame_weights, sample_weight
from river_torchrec.learner import _Lock, locked
from river_torchrec.mixture import OnlineMixture, RunningPrior
from river_torchrec.optim import Adagrad

__all__ = ["AutoCTRClassifier"]

#: The manifest format of :meth:`AutoCTRClassifier.save` checkpoints.
AUTO_FORMAT = "river_torchrec.auto_checkpoint"
_MIXTURE_FILE = "mixture.json"


class AutoCTRClassifier(base.MiniBatchClassifier):
    """The running click rate, DeepFM at a small step and FM at a large one, mixed online.

    The three members learn every event, each on its own; the prediction is their average
    weighted by the mixture's posterior (:class:`~river_torchrec.mixture.OnlineMixture` with
    fixed share ``share``). Whatever the stream, the cumulative log loss is at most
    ``log(3) + T * log(1 / (1 - share))`` above the best member's after ``T`` events, i.e.
    within 0.001 per event of the running click rate (and of the other members) on any
    stream of 1,600 events or more with the default ``share`` (``log(3) / T + 0.0003``).
    The fixed share lets the weight move back to a member that becomes best later (after a
    drift, or once the fast FM has learned the ids that repeat).
    ``benchmarks/bench_defaults.py`` measures it against every peer and ``docs/why.md``
    explains the choice of members.

    Parameters
    ----------
    model
        The learned member with the small step: a :class:`~river_torchrec.CTRClassifier`
        model name (default ``"deepfm"``).
    lr
        Its Adagrad learning rate (the library default, 0.02: best where ids are seen a few
        times, as in Criteo and Avazu).
    fast_model
        The learned member with the large step (default ``"fm"``, the cheapest model that
        learns pairwise interactions).
    fast_lr
        Its Adagrad learning rate (0.2: best where ids repeat, as on MovieLens).
    fast_accumulator
        Initial accumulator of its Adagrad: an id's first steps are about
        ``fast_lr * g / sqrt(fast_accumulator)`` instead of ``fast_lr`` whatever the gradient,
        so ids seen once or twice barely move and only ids that repeat get large steps.
    share
        Fixed-share rate of the mixture (0: the plain Bayes mixture).
    embedding_dim, hidden_units, embeddings, n_buckets, max_rows, numeric, device, seed
        Passed to both learned members (see :class:`~river_torchrec.CTRClassifier`).
    defence
        As :class:`~river_torchrec.CTRClassifier`'s (``"default"``, None or a
        :class:`~river_torchrec.defence.PoisoningDefence`): one defence weighs each event
        once, and every member (the prior included) learns it with that trusted weight.

    Attributes
    ----------
    mixture_
        The :class:`~river_torchrec.mixture.OnlineMixture`; its ``members`` are the
        :class:`~river_torchrec.mixture.RunningPrior`, the slow and the fast classifier.

    Notes
    -----
    :meth:`save` and :meth:`load` write and read one atomic, checksummed directory holding
    each learned member's checkpoint (:mod:`river_torchrec.persistence`, never unpickled)
    and the mixture's weights and the prior's counts as JSON; ``pickle`` works too.

    Examples
    --------
    >>> from river import evaluate, metrics
    >>> from river_torchrec import datasets
    >>> from river_torchrec.auto import AutoCTRClassifier
    >>> model = AutoCTRClassifier(seed=1)
    >>> evaluate.progressive_val_score(
    ...     datasets.RepeatVisits(n_events=4_000, seed=1), model, metrics.LogLoss()
    ... )
    LogLoss: 0.38...

    (the overall click rate alone scores 0.406 there). Where a few users meet a few items
    again and again, the fast FM has taken over:

    >>> max(model.weights_, key=model.weights_.get)
    'fm lr=0.2'
    >>> list(model.weights_)
    ['prior', 'deepfm lr=0.02', 'fm lr=0.2']

    """

    def __init__(
        self,
        model: str = "deepfm",
        lr: float = 0.02,
        fast_model: str = "fm",
        fast_lr: float = 0.2,
        fast_accumulator: float = 1.0,
        share: float = 0.0003,
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (64, 32),
        embeddings: str = "dynamic",
        n_buckets: int = 2**18,
        max_rows: int | None = None,
        numeric: str = "log",
        device: str = "cpu",
        seed: int = 42,
        defence: PoisoningDefence | str | None = "default",
    ) -> None:
        self.model = model
        self.lr = lr
        self.fast_model = fast_model
        self.fast_lr = fast_lr
        self.fast_accumulator = fast_accumulator
        self.share = share
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.embeddings = embeddings
        self.n_buckets = n_buckets
        self.max_rows = max_rows
        self.numeric = numeric
        self.device = device
        self.seed = seed
        self.defence = defence
        self._defence = resolve_defence(defence)
        common = {
            "embedding_dim": embedding_dim,
            "hidden_units": hidden_units,
            "embeddings": embeddings,
            "n_buckets": n_buckets,
            "max_rows": max_rows,
            "numeric": numeric,
            "device": device,
            "seed": seed,
            "defence": None,  # the mixture's own defence weighs each event once for all members
        }
        slow = CTRClassifier(model=model, optimizer="adagrad", lr=lr, **common)
        fast_updater = Adagrad(lr=fast_lr, initial_accumulator_value=fast_accumulator)
        fast = CTRClassifier(model=fast_model, optimizer=fast_updater, **common)
        self.mixture_ = OnlineMixture([RunningPrior(), slow, fast], share=share)
        self._names = ["prior", f"{model} lr={lr:g}", f"{fast_model} lr={fast_lr:g}"]
        self._lock = _Lock()

    @property
    def _multiclass(self) -> bool:
        return False

    @property
    def _is_stochastic(self) -> bool:
        return True

    @property
    def weights_(self) -> dict[str, float]:
        """The mixture weight of each member, by name."""
        return dict(zip(self._names, self.mixture_.weights_))

    @classmethod
    def _unit_test_params(cls):
        yield {"hidden_units": (8,), "embedding_dim": 4, "embeddings": "hash", "n_buckets": 1024}

    def _unit_test_skips(self) -> set[str]:
        return {
            # As for CTRClassifier (and river's own linear models): a frame is one mean-gradient
            # step per member, not a sequence of per-row steps.
            "check_learn_many_matches_learn_one",
        }

    @property
    def defence_(self) -> PoisoningDefence | None:
        """The live :class:`~river_torchrec.defence.PoisoningDefence` (its statistics), if any."""
        return self._defence

    @locked
    def learn_one(self, x: dict, y: base.typing.ClfTarget, w: float = 1.0) -> None:
        if self._defence is None:
            self.mixture_.learn_one(x, y, w)
            return
        label, weight = binary_label(y), sample_weight(w)
        self._defence.learn_defended(
            x, label, weight, lambda trusted: self.mixture_.learn_one(x, y, trusted),
            lambda: self.mixture_.predict_proba_one(x)[True],
        )

    @locked
    def predict_proba_one(self, x: dict) -> dict[Hashable, float]:
        return self.mixture_.predict_proba_one(x)

    @locked
    def learn_many(self, X: pd.DataFrame, y: pd.Series, w: pd.Series | float = 1.0) -> None:
        if self._defence is None or not isinstance(X, pd.DataFrame) or len(X) != len(y) or X.columns.has_duplicates:
            self.mixture_.learn_many(X, y, w)  # no defence, or a frame the members refuse
            return
        labels = [binary_label(v) for v in y.tolist()]
        self._defence.learn_frame_defended(
            X, labels, frame_weights(w, len(X)),
            lambda trusted: self.mixture_.learn_many(X, y, pd.Series(trusted, index=X.index, dtype=float)),
            lambda: self.mixture_.predict_proba_many(X)[True].tolist(),
        )

    @locked
    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.mixture_.predict_proba_many(X)

    # ---------------------------------------------------------------- checkpoints

    @locked
    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint directory atomically (the members' own checkpoints and the mixture).

        Examples
        --------
        >>> import tempfile
        >>> from river_torchrec import datasets
        >>> from river_torchrec.auto import AutoCTRClassifier
        >>> model = AutoCTRClassifier(hidden_units=(8,), seed=1)
        >>> stream = list(datasets.SyntheticCTR(n_events=200, seed=1))
        >>> for x, y in stream[:100]:
        ...     model.learn_one(x, y)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     model.save(f"{tmp}/auto")
        ...     resumed = AutoCTRClassifier.load(f"{tmp}/auto")
        >>> for x, y in stream[100:]:
        ...     model.learn_one(x, y)
        ...     resumed.learn_one(x, y)
        >>> resumed.predict_proba_one(stream[0][0]) == model.predict_proba_one(stream[0][0])
        True

        """
        from river_torchrec import persistence

        path = Path(path)
        persistence._check_replaceable(path)
        mix = self.mixture_
        prior, *learners = mix.members
        files: dict[str, bytes] = {}
        for i, member in enumerate(learners, start=1):
            with member._lock:
                files.update({f"member-{i}/{name}": data for name, data in persistence._serialize(member).items()})
        enc = persistence._Encoder({})
        state = {
            "format_version": persistence.FORMAT_VERSION,
            "params": enc.params(self, "params"),
            "defence": enc(self._defence, "defence"),
            "log_weights": [a if math.isfinite(a) else None for a in mix._log_w],
            "member_losses": list(mix.member_losses_),
            "n_learned": mix.n_learned_,
            "prior": {"clicks": prior.clicks_, "n": prior.n_},
        }
        files[_MIXTURE_FILE] = json.dumps(state, sort_keys=True).encode()
        persistence._commit(path, files, AUTO_FORMAT)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> AutoCTRClassifier:
        """Read a checkpoint written by :meth:`save`, every file verified first.

        Raises :class:`~river_torchrec.persistence.CheckpointError` if a file is missing,
        truncated or modified, or holds another format.
        """
        from river_torchrec import persistence

        path = persistence._locate(Path(path))
        files = persistence._read_verified(path, AUTO_FORMAT, names=None)
        try:
            state = json.loads(files[_MIXTURE_FILE])
            if state.get("format_version") != persistence.FORMAT_VERSION:
                raise persistence.CheckpointError(f"{_MIXTURE_FILE} is of another format version")
            dec = persistence._Decoder(persistence._Classes(()), {}, torch.device("cpu"))
            params = dec.attributes(state["params"], "params")
            if device is not None:
                params["device"] = device
            model = cls(**params)
            model._defence = dec(state["defence"], "defence")
            mix = model.mixture_
            for i in range(1, len(mix.members)):
                prefix = f"member-{i}/"
                member_files = {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}
                mix.members[i] = persistence._from_files(member_files, device)
            prior = mix.members[0]
            prior.clicks_, prior.n_ = float(state["prior"]["clicks"]), float(state["prior"]["n"])
            log_w = [-math.inf if a is None else float(a) for a in state["log_weights"]]
            if len(log_w) != len(mix.members) or len(state["member_losses"]) != len(mix.members):
                raise persistence.CheckpointError(f"{_MIXTURE_FILE} does not have one weight per member")
            mix._log_w, mix._w = log_w, [math.exp(a) for a in log_w]
            mix.member_losses_ = [float(v) for v in state["member_losses"]]
            mix.n_learned_ = int(state["n_learned"])
        except persistence.CheckpointError as e:
            raise persistence.CheckpointError(f"{path}: {e}") from e.__cause__
        except (KeyError, TypeError, ValueError) as e:
            raise persistence.CheckpointError(f"{path}: the checkpoint does not fit: {type(e).__name__}: {e}") from e
        return model
