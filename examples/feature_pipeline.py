"""Feature engineering in a river pipeline before the CTR model.

    python examples/feature_pipeline.py --n 20000

Each transformer of ``river_torchrec.features`` is a river transformer, so they chain with
``|`` and the pipeline predicts and learns one event at a time:

* ``FeatureCrosser`` adds explicit crosses (segment x category, device x position);
* ``LogBucketizer`` turns a heavy-tailed count (sessions per week) into log-squared
  bucket categories (continuous numbers such as prices are better left to the model,
  which log-scales them);
* ``DecayedCTREncoder`` adds each site's and item's recent, smoothed click rate;
* ``FrequencyFilter`` maps ids seen fewer than 3 times to one ``"<rare>"`` value.

The supervised encoders only ever use labels learned *before* the event they transform,
so the progressive LogLoss below is honest.
"""

from __future__ import annotations

import argparse

from river import compose, metrics

from river_torchrec import CTRClassifier
from river_torchrec.datasets import SyntheticCTR
from river_torchrec.features import DecayedCTREncoder, FeatureCrosser, FrequencyFilter, LogBucketizer


def progressive_logloss(model, dataset) -> float:
    metric = metrics.LogLoss()
    for x, y in dataset:
        metric.update(y, model.predict_proba_one(x))
        model.learn_one(x, y)
    return metric.get()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    dataset = SyntheticCTR(n_events=args.n, seed=args.seed)

    pipeline = compose.Pipeline(
        FeatureCrosser([("user_segment", "item_category"), ("device", "ad_position")]),
        LogBucketizer(fields=["user_activity"]),
        DecayedCTREncoder(fields=["site", "item_id"], half_life=5_000),
        FrequencyFilter(min_count=3, fields=["user_id", "item_id"]),
        CTRClassifier(model="fm", seed=args.seed),
    )
    x, _ = next(iter(dataset))
    print("features the model sees for the first event:")
    print(" ", pipeline.transform_one(x))

    plain = CTRClassifier(model="fm", seed=args.seed)
    print(f"progressive validation over {args.n} events")
    print(f"  FM on raw features:    LogLoss {progressive_logloss(plain, dataset):.4f}")
    print(f"  FM after the pipeline: LogLoss {progressive_logloss(pipeline, dataset):.4f}")


if __name__ == "__main__":
    main()
