"""Ranking evaluation: test-then-learn HitRate@k, NDCG@k, MRR and coverage of rankers.

`evaluate_ranking` runs one or several river rankers (`reco.base.Ranker`: ours from
`river_torchrec.reco` or river's own `reco.BiasedMF`, ...) over an interaction stream of
`(user, item, y, x)` events: before learning each positive, every ranker ranks the
catalogue for that user and the position of the item the user actually chose is recorded.
The `RankingReport` prints a markdown table and plots rolling curves.

This package does not import torch.
"""

from __future__ import annotations

from .ranking import RankingReport, RankingResult, evaluate_ranking, iter_interactions
from .ranking_metrics import hit_rate, mrr, ndcg

__all__ = [
    "RankingReport",
    "RankingResult",
    "evaluate_ranking",
    "hit_rate",
    "iter_interactions",
    "mrr",
    "ndcg",
]
