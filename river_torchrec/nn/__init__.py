"""Plain ``torch.nn.Module`` CTR models over dynamic embedding tables (no river inside)."""

from __future__ import annotations

from river_torchrec.nn.base import CTRModel
from river_torchrec.nn.dcnv2 import DCNv2
from river_torchrec.nn.deepfm import DeepFM
from river_torchrec.nn.embedding import PADDING_ROW, DynamicEmbedding
from river_torchrec.nn.fm import FM
from river_torchrec.nn.hashing import stable_hash64
from river_torchrec.nn.lr import LogisticRegression
from river_torchrec.nn.mlp import MLP
from river_torchrec.nn.two_tower import TwoTower
from river_torchrec.nn.wide_deep import WideAndDeep

__all__ = [
    "CTRModel",
    "DCNv2",
    "DeepFM",
    "DynamicEmbedding",
    "FM",
    "LogisticRegression",
    "MLP",
    "PADDING_ROW",
    "TwoTower",
    "WideAndDeep",
    "stable_hash64",
]

#: Names accepted by ``CTRClassifier(model=...)``.
MODELS: dict[str, type[CTRModel]] = {
    "lr": LogisticRegression,
    "fm": FM,
    "deepfm": DeepFM,
    "widedeep": WideAndDeep,
    "dcnv2": DCNv2,
}
