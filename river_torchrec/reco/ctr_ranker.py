"""The CTR models (FM, DeepFM, DCN-v2, ...) as rankers over (user, item, context) features."""

from __future__ import annotations

from collections.abc import Sequence

from river_torchrec.nn import CTRModel
from river_torchrec.optim import Updater
from river_torchrec.optim.schedulers import Scheduler
from river_torchrec.reco.base import NeuralRanker

__all__ = ["CTRRanker"]


class CTRRanker(NeuralRanker):
    """Any CTR model of :mod:`river_torchrec.nn` as an online ranker.

    Each (user, item, context) interaction is one feature dict, ``{"user": id, **user
    features, **context, "item": id, **item features}``, scored by the CTR model, so user
    and item features interact with each other and with the context (which a two-tower
    model cannot do). :meth:`rank` and :meth:`recommend` build the candidates' rows from a
    cache of item-side rows plus the user's, and score them in one batched forward pass:
    ``O(N)`` model evaluations for a catalogue of ``N`` items. For retrieval over large
    catalogues, use :class:`~river_torchrec.reco.TwoTowerRanker` (and re-rank its top items
    with this one).

    Parameters
    ----------
    model
        ``"lr"``, ``"fm"``, ``"deepfm"``, ``"widedeep"``, ``"dcnv2"`` or a
        :class:`~river_torchrec.nn.CTRModel` subclass.
    feedback, rating_range, n_negatives, negative_sampling, loss, user_features, item_features, undeclared_features, side_numeric
        As for :class:`~river_torchrec.reco.TwoTowerRanker`.
    embedding_dim, hidden_units, embeddings, n_buckets, min_count, max_rows, optimizer, lr, scheduler, batch_size, device, seed, model_params, numeric, embedding_dtype, clip_numeric, missing
        As for :class:`~river_torchrec.CTRClassifier`. With ``feedback="explicit"`` and
        ``batch_size=1`` on CPU, LR, FM, DeepFM and Wide&Deep take the NumPy one-event path.

    Notes
    -----
    Thompson sampling (``recommend(..., explore="thompson")``) perturbs each item's logit
    by a draw from a Laplace posterior of its bias, ``N(0, 1 / (1 + n / 4))`` with ``n`` the
    events learned about the item: new items get explored, well-known ones barely.

    Examples
    --------
    >>> from river_torchrec.reco import CTRRanker
    >>> model = CTRRanker(model="fm", item_features=("genre",), seed=1)
    >>> plays = [("ann", "take five", "jazz"), ("ann", "so what", "jazz"), ("cat", "so what", "jazz"),
    ...          ("cat", "blue in green", "jazz"), ("bob", "paranoid", "metal"),
    ...          ("bob", "iron man", "metal"), ("dan", "iron man", "metal")]
    >>> for _ in range(20):
    ...     for user, item, genre in plays:
    ...         model.learn_one(user, item, True, {"genre": genre})
    >>> model.rank("ann", ["iron man", "blue in green"])  # she never played either: genre decides
    ['blue in green', 'iron man']
    >>> model.recommend("dan", k=1)
    ['paranoid']

    """

    def __init__(
        self,
        model: str | type[CTRModel] = "deepfm",
        feedback: str = "implicit",
        rating_range: tuple[float, float] | None = None,
        n_negatives: int = 4,
        negative_sampling: str = "uniform",
        loss: str = "bce",
        user_features: Sequence[str] | None = None,
        item_features: Sequence[str] | None = None,
        undeclared_features: str = "auto",
        side_numeric: str = "category",
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (64, 32),
        embeddings: str = "dynamic",
        n_buckets: int = 2**18,
        min_count: int = 1,
        max_rows: int | None = None,
        optimizer: str | Updater = "adagrad",
        lr: float | None = None,
        scheduler: Scheduler | None = None,
        batch_size: int = 1,
        device: str = "cpu",
        seed: int = 42,
        model_params: dict | None = None,
        numeric: str = "log",
        embedding_dtype: str = "float32",
        clip_numeric: float | None = None,
        missing: str = "nan-is-missing",
    ) -> None:
        self.model = model
        self.feedback = feedback
        self.rating_range = rating_range
        self.n_negatives = n_negatives
        self.negative_sampling = negative_sampling
        self.loss = loss
        self.user_features = user_features
        self.item_features = item_features
        self.undeclared_features = undeclared_features
        self.side_numeric = side_numeric
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.embeddings = embeddings
        self.n_buckets = n_buckets
        self.min_count = min_count
        self.max_rows = max_rows
        self.optimizer = optimizer
        self.lr = lr
        self.scheduler = scheduler
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.model_params = model_params
        self.numeric = numeric
        self.embedding_dtype = embedding_dtype
        self.clip_numeric = clip_numeric
        self.missing = missing
        self._setup_ranker()

    @classmethod
    def _unit_test_params(cls):
        yield {"model": "fm", "embedding_dim": 4, "n_negatives": 2}
        yield {"model": "deepfm", "embedding_dim": 4, "hidden_units": (8,), "loss": "bpr"}
        yield {"model": "dcnv2", "embedding_dim": 4, "hidden_units": (8,), "feedback": "explicit"}
