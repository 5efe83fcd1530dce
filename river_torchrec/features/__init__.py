"""River transformers for click-stream features.

Every transformer here follows river's `Transformer` API (`learn_one`/`transform_one`, plus
`learn_many`/`transform_many` on pandas DataFrames). The subpackage is torch-free by design:
it must stay importable without importing torch.
"""

from __future__ import annotations

from .decayed_ctr import DecayedCTREncoder
from .feature_crosser import FeatureCrosser
from .frequency_filter import FrequencyFilter
from .log_bucketizer import LogBucketizer
from .quantile_binner import QuantileBinner
from .time_context import TimeContext

__all__ = [
    "DecayedCTREncoder",
    "FeatureCrosser",
    "FrequencyFilter",
    "LogBucketizer",
    "QuantileBinner",
    "TimeContext",
]
