"""Online rankers speaking river's ``reco.base.Ranker`` API, over PyTorch models.

API summary
-----------
All rankers: ``learn_one(user, item, y, x=None)``, ``predict_one(user, item, x=None) -> float``,
``rank(user, items, x=None) -> list`` (one batched forward over all candidates),
``recommend(user, k=10, x=None, exclude_seen=True, explore=None) -> list`` over the catalogue of
items learned so far (``explore``: None/"greedy", "epsilon", "thompson" or a policy from
:mod:`river_torchrec.reco.exploration`), ``catalogue`` (items by first appearance).

- ``MostPopular(threshold=None, seed=None)``: most-popular-so-far baseline; ``y`` counts as a
  positive when truthy (or ``y >= threshold``); ``predict_one`` is the item's positive count.
- ``TwoTowerRanker(feedback="implicit", rating_range=None, n_negatives=8,
  negative_sampling="uniform", loss="bce", user_features=None, item_features=None,
  undeclared_features="auto", side_numeric="category", side_weight=1.0,
  embedding_dim=64, hidden_units=None, init_std=0.01, index="exact", nprobe=32,
  <core params with optimizer="adagrad", lr=0.15>)``; ``add_items(items, features=None)`` puts
  cold items in the catalogue; ``item_vectors()`` gives the cached ``[N, k]`` vectors and biases.
- ``CTRRanker(model="deepfm", feedback="implicit", rating_range=None, n_negatives=4,
  negative_sampling="uniform", loss="bce", user_features=None, item_features=None,
  undeclared_features="auto", side_numeric="category", embedding_dim=8, hidden_units=(64, 32),
  <core params>)`` (also ``add_items``): ``model`` is any CTR model name
  ("lr", "fm", "deepfm", "widedeep", "dcnv2") or a ``CTRModel`` subclass.

``<core params>``: embeddings, n_buckets, min_count, max_rows, optimizer, lr, scheduler,
batch_size, device, seed, model_params, numeric, embedding_dtype, clip_numeric, missing (as for
``CTRClassifier``). ``feedback="implicit"``: ``y`` is a bool or 0/1, a positive is learned with
``n_negatives`` sampled negatives. ``feedback="explicit"``: ``y`` is a bool/0/1 click, or a rating
in ``rating_range=(low, high)`` (learned as a soft label; ``predict_one`` returns the rating scale).
Side features: keys of ``x`` named in ``user_features``/``item_features`` are stored per user/item
(latest value wins) and used whenever that user/item is scored. Other keys are routed
(``undeclared_features="auto"``): a key whose value repeats with the item becomes an item feature,
with the user a user feature, otherwise context; ``feature_sides`` shows the decisions.

Examples
--------
>>> from river_torchrec import reco
>>> model = reco.MostPopular()
>>> for user, item in [("ann", "a"), ("bob", "a"), ("bob", "b")]:
...     model.learn_one(user, item, True)
>>> model.recommend("carl", k=2)
['a', 'b']

"""

from __future__ import annotations

from river_torchrec.reco import exploration
from river_torchrec.reco.ctr_ranker import CTRRanker
from river_torchrec.reco.most_popular import MostPopular
from river_torchrec.reco.two_tower import TwoTowerRanker

__all__ = ["CTRRanker", "MostPopular", "TwoTowerRanker", "exploration"]
