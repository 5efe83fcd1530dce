"""Test-then-learn ranking evaluation: exact metrics, candidates, fast paths, bad input."""

from __future__ import annotations

import copy
import math
import pathlib

import numpy as np
import pytest
from river import optim, reco

from river_torchrec.evaluate import RankingResult, evaluate_ranking, hit_rate, mrr, ndcg
from river_torchrec.evaluate.ranking_metrics import per_query
from river_torchrec.evaluate.scorers import RankScorer, RiverMFScorer, make_scorer


class AtPosition(reco.base.Ranker):
    """Puts the relevant item (told through x["true"]) at position `r`; records candidates."""

    def __init__(self, r: int) -> None:
        super().__init__()
        self.r = r
        self.calls: list[tuple[str, list[str]]] = []
        self.learned: list[tuple[str, str, object]] = []

    def learn_one(self, user, item, y, x=None):
        self.learned.append((user, item, y))

    def predict_one(self, user, item, x=None):
        return 0.0

    def rank(self, user, items, x=None):
        items = list(items)
        self.calls.append((user, items))
        true = (x or {}).get("true")
        if true not in items:
            return sorted(items)
        others = sorted(i for i in items if i != true)
        return others[: self.r - 1] + [true] + others[self.r - 1 :]


def _catalogue_then_queries(n_items: int = 30, n_queries: int = 40) -> list:
    # Negatives by one user fill the catalogue; then each query comes from a new user, so
    # nothing is excluded and every candidate set is the whole catalogue.
    events = [("warmup", f"i{j}", False, {}) for j in range(n_items)]
    events += [(f"q{t}", f"i{t % n_items}", True, {"true": f"i{t % n_items}"})
               for t in range(n_queries)]
    return events


@pytest.mark.parametrize("r", [1, 2, 3, 10, 11, 25])
def test_closed_form_metrics_of_a_fixed_position(r):
    report = evaluate_ranking(_catalogue_then_queries(), AtPosition(r), k=10)
    result = report["AtPosition"]
    assert report.n_queries == 40 and report.n_cold == 0 and report.n_repeats == 0
    assert result.ranks.tolist() == [float(r)] * 40
    assert result.hit_rate == (1.0 if r <= 10 else 0.0)
    assert result.ndcg == pytest.approx(1 / math.log2(r + 1) if r <= 10 else 0.0, abs=1e-12)
    assert result.mrr == pytest.approx(1 / r, abs=1e-12)


def test_metric_functions_closed_forms():
    ranks = [1, 2, 5, 10, 11, math.inf]
    assert hit_rate(ranks, 10) == pytest.approx(4 / 6)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 6)
    expected_ndcg = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert ndcg(ranks, 10) == pytest.approx(expected_ndcg)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 11) / 6)
    assert math.isnan(hit_rate([], 10))
    with pytest.raises(ValueError, match=r"ranks must be 1-based positions \(>= 1\) or inf"):
        hit_rate([0, 1], 10)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        ndcg([1], 0)
    with pytest.raises(ValueError, match="metric must be 'hit_rate', 'ndcg' or 'mrr', got 'auc'"):
        per_query([1], "auc")


def test_cold_items_are_misses_and_repeats_are_skipped():
    events = [
        ("a", "i1", True, {"true": "i1"}),   # empty catalogue: cold
        ("b", "i2", True, {"true": "i2"}),   # new item: cold
        ("c", "i1", True, {"true": "i1"}),   # rank 1 among {i1, i2}
        ("a", "i1", True, {"true": "i1"}),   # a repeat of a's own item: skipped
        ("a", "i2", True, {"true": "i2"}),   # i1 excluded: only i2 left
    ]
    model = AtPosition(1)
    report = evaluate_ranking(events, {"m": model}, k=1)
    assert (report.n_queries, report.n_cold, report.n_repeats) == (4, 2, 1)
    assert report["m"].ranks.tolist() == [math.inf, math.inf, 1.0, 1.0]
    assert report["m"].hit_rate == 0.5
    assert model.calls[-1] == ("a", ["i2"])
    # Every event is learned, the skipped repeat included.
    assert len(model.learned) == 5
    # Without exclusion, the repeat is a query and a's candidates include i1.
    report = evaluate_ranking(events, {"m": AtPosition(1)}, k=1, exclude_seen=False)
    assert (report.n_queries, report.n_repeats) == (5, 0)


def test_seen_items_are_never_candidates():
    rng = np.random.default_rng(0)
    events = [(f"u{rng.integers(5)}", f"i{rng.integers(40)}", bool(rng.random() < 0.7), {})
              for _ in range(400)]
    model = AtPosition(1)
    evaluate_ranking(events, model)
    seen: dict[str, set[str]] = {}
    calls = iter(model.calls)
    for user, item, y, _ in events:
        if y and item not in seen.get(user, set()) and any(item in s for s in seen.values()):
            call_user, candidates = next(calls)
            assert call_user == user
            assert not set(candidates) & seen.get(user, set())
            catalogue = set().union(*seen.values())
            assert set(candidates) == catalogue - seen.get(user, set())
        elif y and item not in seen.get(user, set()) and seen:
            next(calls)  # a cold query is still ranked (for coverage)
        seen.setdefault(user, set()).add(item)


def test_sampled_mode_candidates_and_label():
    model = AtPosition(1)
    events = _catalogue_then_queries(n_items=300, n_queries=20)
    report = evaluate_ranking(events, model, mode="sampled", n_sampled=100, seed=3)
    for (_, candidates), (_, item, _, _) in zip(model.calls, events[300:]):
        assert len(candidates) == 101 and len(set(candidates)) == 101
        assert item in candidates
    assert report["AtPosition"].hit_rate == 1.0
    assert "sampled candidates (the true item + 100 random negatives" in report.label
    assert "inflates" in str(report)
    assert report.label.startswith("sampled")
    # Fewer than n_sampled others: all of them.
    model = AtPosition(1)
    evaluate_ranking(_catalogue_then_queries(n_items=30, n_queries=3), model, mode="sampled")
    assert all(len(c) == 30 for _, c in model.calls)


def test_coverage_of_a_fixed_order():
    # AtPosition(20) puts the true item past the top 10, which is then the first 10 other
    # items in name order: i0, i1, i10, ..., i17, and i18 when the true item is one of those.
    report = evaluate_ranking(_catalogue_then_queries(), AtPosition(20), k=10)
    result = report["AtPosition"]
    assert result.n_recommended == 11 and result.catalogue_size == 30
    assert result.coverage == pytest.approx(11 / 30)


def test_candidate_order_is_shuffled_and_seeded():
    def orders(seed):
        model = AtPosition(1)
        evaluate_ranking(_catalogue_then_queries(), model, seed=seed)
        return [c for _, c in model.calls]

    assert orders(1) == orders(1)
    assert orders(1) != orders(2)
    assert any(c != sorted(c) for c in orders(1))


def _mf_stream(n: int = 1_500, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(f"u{rng.integers(30)}", f"i{rng.integers(60)}", float(rng.random() < 0.6), None)
            for _ in range(n)]


@pytest.mark.parametrize(
    "make",
    [
        lambda: reco.BiasedMF(n_factors=4, seed=1, latent_optimizer=optim.SGD(0.05)),
        lambda: reco.FunkMF(n_factors=4, seed=2, optimizer=optim.Adam(0.01)),
        lambda: reco.Baseline(optimizer=optim.SGD(0.05)),
    ],
    ids=["BiasedMF", "FunkMF", "Baseline"],
)
def test_river_fast_path_matches_rank(make):
    class ViaRank(type(make())):  # a subclass: evaluated through its own rank()
        pass

    fast = make()
    slow = ViaRank.__new__(ViaRank)
    slow.__dict__ = copy.deepcopy(fast.__dict__)
    assert isinstance(make_scorer(fast), RiverMFScorer)
    assert type(make_scorer(slow)) is RankScorer
    stream = _mf_stream()
    a = evaluate_ranking(stream, {"m": fast}, seed=5)["m"]
    b = evaluate_ranking(stream, {"m": slow}, seed=5)["m"]
    assert a.ranks.tolist() == b.ranks.tolist()
    assert a.n_recommended == b.n_recommended
    assert a.hit_rate > 0  # the stream is not degenerate
    # Same parameters at the end, so the fast path did not change what was learned.
    assert fast.predict_one("u1", "i1") == pytest.approx(slow.predict_one("u1", "i1"))


def test_several_models_share_the_stream_and_report_table():
    events = _catalogue_then_queries()
    report = evaluate_ranking(events, [AtPosition(1), AtPosition(11)], k=10)
    assert list(report) == ["AtPosition", "AtPosition (2)"]
    table = report.to_markdown()
    assert table.splitlines()[0] == (
        "| model | HitRate@10 | NDCG@10 | MRR | coverage@10 | events/s |"
    )
    assert "| AtPosition | 1.0000 | 1.0000 | 1.0000 |" in table
    assert "| AtPosition (2) | 0.0000 | 0.0000 | 0.0909 |" in table
    assert str(report).startswith(
        "full catalogue (every item seen so far), seen items excluded: 40 queries over 70 events"
    )
    assert all(r.events_per_second > 0 for r in report.values())


def test_learn_only_positives_and_max_events():
    model = AtPosition(1)
    events = _catalogue_then_queries()
    report = evaluate_ranking(events, model, learn="positives")
    assert all(y for _, _, y in model.learned) and len(model.learned) == 40
    # The warm-up negatives were not learned, so their items never entered the catalogue.
    assert report.n_cold == 30
    model = AtPosition(1)
    report = evaluate_ranking(events, model, max_events=35)
    assert report.n_events == 35 and len(model.learned) == 35 and report.n_queries == 5


def test_interaction_formats():
    dicts = [{"user": "a", "item": "i1", "y": True}, {"user": "b", "item": "i1", "y": 1, "x": {}}]
    triples = [("a", "i1", True), ("b", "i1", 1)]
    for stream in (dicts, triples):
        report = evaluate_ranking(stream, AtPosition(1))
        assert report.n_queries == 2 and report["AtPosition"].ranks.tolist() == [math.inf, 1.0]


def test_rolling_and_plot(tmp_path: pathlib.Path):
    result = RankingResult("m", 1, np.array([1, 2, 1, 1, 2, 2.0]), np.arange(6), 1, 3, 6, 1.0)
    assert result.rolling("hit_rate", 3).tolist() == pytest.approx(
        [1.0, 0.5, 2 / 3, 2 / 3, 2 / 3, 1 / 3]
    )
    assert result.rolling("mrr", 1).tolist() == [1.0, 0.5, 1.0, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="window must be a positive integer, got 0"):
        result.rolling("hit_rate", 0)
    report = evaluate_ranking(_catalogue_then_queries(), [AtPosition(1), AtPosition(5)],
                              window=10, marks=[50])
    path = tmp_path / "rolling.png"
    report.plot(str(path), metric="ndcg")
    assert path.stat().st_size > 10_000


def test_progress_bar(capsys):
    evaluate_ranking(_catalogue_then_queries(), AtPosition(1), progress=True)
    err = capsys.readouterr().err
    assert "ranking" in err and "70/70" in err


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"k": 0}, "k must be a positive integer, got 0"),
        ({"k": True}, "k must be a positive integer, got True"),
        ({"mode": "top"}, "mode must be 'full' or 'sampled', got 'top'"),
        ({"mode": "sampled", "n_sampled": 0}, "n_sampled must be a positive integer, got 0"),
        ({"learn": "some"}, "learn must be 'all' or 'positives', got 'some'"),
        ({"window": 0}, "window must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        evaluate_ranking([("a", "i", True)], AtPosition(1), **kwargs)


def test_bad_streams_and_models():
    with pytest.raises(ValueError, match=r"^interaction 1: expected \(user, item, y, x\), "
                                         r"\(user, item, y\) or a dict with keys 'user', "
                                         r"'item', 'y', got list$"):
        evaluate_ranking([("a", "i", True), ["a", "i", True]], AtPosition(1))
    with pytest.raises(ValueError, match="^interaction 0: a dict needs the keys 'user', "
                                         "'item' and 'y', missing 'y'$"):
        evaluate_ranking([{"user": "a", "item": "i"}], AtPosition(1))
    with pytest.raises(TypeError, match=r"^model 'x' is not a ranker: it needs rank\(\) and "
                                        r"learn_one\(\)$"):
        evaluate_ranking([("a", "i", True)], {"x": object()})
    with pytest.raises(ValueError, match="^models is empty$"):
        evaluate_ranking([("a", "i", True)], {})

    class Dropper(AtPosition):
        def rank(self, user, items, x=None):
            return list(items)[:-1]

    with pytest.raises(ValueError, match=r"^Dropper.rank must return every candidate once: got 0 items for 1 candidate\(s\)$"):
        evaluate_ranking([("a", "i", True), ("b", "j", True), ("c", "i", True)], Dropper(1))


def test_item_features_are_hidden_from_rank_but_learned():
    class Spy(AtPosition):
        def __init__(self):
            super().__init__(1)
            self.rank_contexts, self.learn_contexts = [], []

        def learn_one(self, user, item, y, x=None):
            self.learn_contexts.append(dict(x))

        def rank(self, user, items, x=None):
            self.rank_contexts.append(dict(x))
            return super().rank(user, items, x)

    events = [(f"u{t}", f"i{t % 3}", True, {"age": 30.0, "genre": f"g{t % 3}", "true": "-"})
              for t in range(6)]
    spy = Spy()
    evaluate_ranking(events, spy, item_features=["genre"])
    assert spy.rank_contexts and all(c == {"age": 30.0, "true": "-"} for c in spy.rank_contexts)
    assert [c["genre"] for c in spy.learn_contexts] == ["g0", "g1", "g2"] * 2
    spy = Spy()
    evaluate_ranking(events, spy)
    assert all("genre" in c for c in spy.rank_contexts)


def test_evaluate_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, river_torchrec.evaluate, river_torchrec.datasets; "
            "river_torchrec.datasets.SyntheticInteractions(n_events=10); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
