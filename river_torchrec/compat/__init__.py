"""Bridges to other machine-learning APIs."""

from __future__ import annotations

from river_torchrec.compat.sklearn import SKLearnCTRClassifier

__all__ = ["SKLearnCTRClassifier"]
