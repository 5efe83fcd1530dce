"""Data-parallel training: two Gloo workers on 127.0.0.1 against single-process references."""

from __future__ import annotations

import itertools
import os
import pathlib
import select
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from river_torchrec import CTRClassifier, optim
from river_torchrec.datasets import SyntheticCTR
from river_torchrec.distributed import (
    DistributedCTR,
    free_port,
    init_process_group,
    owner,
    shard,
)
from river_torchrec.distributed.checkpoint import classifier_state, load_classifier_state
from river_torchrec.encoding import parse_features
from river_torchrec.nn import stable_hash64

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with Gloo"
)

WORLD = 2
BATCH = 4  # events per worker per step
N_EVENTS = 320
FIELDS = [
    "user_id", "item_id", "item_category", "user_segment", "device", "site", "ad_position", "hour",
    "price", "user_activity", "item_age_days", "position_score",
]  # fmt: skip

SMALL = {"embedding_dim": 4, "hidden_units": (8,), "seed": 3}
SYNC_SCENARIOS = {
    # Hand-written gradients, hashed rows (with collisions: 256 buckets).
    "deepfm-hash": {"model": "deepfm", "embeddings": "hash", "n_buckets": 256},
    # Dynamic rows with admission after 2 sightings and LRU eviction beyond 60 rows.
    "fm-dynamic": {"model": "fm", "embeddings": "dynamic", "min_count": 2, "max_rows": 60},
    # The autograd path.
    "dcnv2-dynamic": {"model": "dcnv2", "embeddings": "dynamic"},
}
LOCAL = {"model": "fm", "embeddings": "hash", "n_buckets": 512}
LOCAL_EVERY = 8
RESUME = {"model": "deepfm", "embeddings": "hash", "n_buckets": 256}


def _events() -> list:
    return list(SyntheticCTR(n_events=N_EVENTS, n_users=60, n_items=40, seed=5))


def _make(params: dict, optimizer: str = "ogd", batch_size: int = 1) -> CTRClassifier:
    updater = optim.OGD(lr=0.1) if optimizer == "ogd" else optim.Adam(lr=0.01)
    return CTRClassifier(**SMALL, **params, optimizer=updater, batch_size=batch_size)


def _snapshot(clf: CTRClassifier) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in clf.model_.named_parameters()},
        "table": clf.model_.embedding.weight.clone(),
        "vocab": clf.model_.embedding.key_to_row(),
        "slots": dict(clf._encoder.slots),
    }


class _Crash(Exception):
    pass


def _crashing(stream, after: int):
    for i, event in enumerate(stream):
        if i == after:
            raise _Crash
        yield event


# ------------------------------------------------------------------ the workers


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    init_process_group("gloo", timeout=60, threads=1)
    events = _events()
    mine = list(shard(events, rank, WORLD))
    results: dict = {}

    for name, params in SYNC_SCENARIOS.items():
        trainer = DistributedCTR(_make(params), mode="sync", batch_size=BATCH, check_every=1)
        report = trainer.learn(mine)
        results[name] = {"state": _snapshot(trainer.classifier), "report": report.as_dict()}

    # The consistency check is not vacuous: a one-worker change is caught on both workers.
    if rank == 1:
        with torch.no_grad():
            trainer.classifier.model_.bias.add_(1e-6)
    try:
        trainer.check_consistency()
        results["divergence caught"] = False
    except RuntimeError as exc:
        results["divergence caught"] = "differ" in str(exc)

    trainer = DistributedCTR(
        _make(LOCAL, batch_size=BATCH), mode="local_sgd", batch_size=BATCH, sync_every=LOCAL_EVERY, fields=FIELDS,
        check_every=1,
    )
    report = trainer.learn(mine)
    results["local_sgd"] = {"state": _snapshot(trainer.classifier), "report": report.as_dict()}

    # Resume: a run that crashes (on both workers, at the same step) after some checkpoints,
    # resumed from its last checkpoint, ends where an uninterrupted run ends.
    shards = [list(shard(events, r, WORLD)) for r in range(WORLD)]
    crash_at = min(len(s) for s in shards) // 2 // BATCH * BATCH
    full = DistributedCTR(_make(RESUME, "adam"), batch_size=BATCH)
    full.learn(mine)
    folder = os.path.join(out, "checkpoints")
    crashed = DistributedCTR(_make(RESUME, "adam"), batch_size=BATCH, checkpoint_dir=folder, checkpoint_every=48)
    try:
        crashed.learn(_crashing(mine, crash_at))
    except _Crash:
        pass
    resumed = DistributedCTR(_make(RESUME, "adam"), batch_size=BATCH, checkpoint_dir=folder, checkpoint_every=48)
    report = resumed.learn(mine, resume=True)
    results["resume"] = {
        "full": _snapshot(full.classifier),
        "resumed": _snapshot(resumed.classifier),
        "report": report.as_dict(),
        "crash_at": crash_at,
    }
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("distributed")
    ctx = mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two workers did not finish within 120 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# --------------------------------------------------------------- references


def _shards() -> list[list]:
    events = _events()
    return [list(shard(events, r, WORLD)) for r in range(WORLD)]


def _global_batches(shards: list[list]):
    """Step s's global batch: worker 0's s-th batch, then worker 1's, until all are exhausted."""
    for s in itertools.count():
        batch = [e for part in shards for e in part[s * BATCH : (s + 1) * BATCH]]
        if not batch:
            return
        yield batch


def _sync_reference(params: dict) -> tuple[CTRClassifier, float, int]:
    """One process learning the concatenated global batches; its progressive log loss."""
    clf = _make(params, batch_size=10**9)
    loss, n, steps = 0.0, 0, 0
    for batch in _global_batches(_shards()):
        for x, y in batch:
            p = min(max(clf.predict_proba_one(x)[True], 1e-15), 1 - 1e-15)
            loss -= torch.log(torch.tensor(p if y else 1 - p, dtype=torch.float64)).item()
            n += 1
        for x, y in batch:
            clf.learn_one(x, y)
        clf.flush()
        steps += 1
    return clf, loss / n, steps


def _assert_same(state: dict, clf: CTRClassifier, atol: float) -> None:
    ref = _snapshot(clf)
    assert state["slots"] == ref["slots"]
    assert state["vocab"] == ref["vocab"]
    assert state["params"].keys() == ref["params"].keys()
    for name, p in ref["params"].items():
        torch.testing.assert_close(state["params"][name], p, atol=atol, rtol=0, msg=name)
    torch.testing.assert_close(state["table"], ref["table"], atol=atol, rtol=0)


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(SYNC_SCENARIOS))
def test_sync_sgd_equals_one_process_on_the_global_batch(workers, name):
    ref, logloss, steps = _sync_reference(SYNC_SCENARIOS[name])
    for rank in range(WORLD):
        _assert_same(workers[rank][name]["state"], ref, atol=1e-5)
    report = workers[0][name]["report"]
    assert report["n_events"] == N_EVENTS
    assert report["n_steps"] == steps
    assert report["logloss"] == pytest.approx(logloss, abs=1e-5)


def test_workers_hold_identical_models(workers):
    # Each run verified bit-identical weights after every step (check_every=1); the final
    # weights are bit-identical too, and a one-worker change was detected.
    for name in [*SYNC_SCENARIOS, "local_sgd"]:
        a, b = workers[0][name]["state"], workers[1][name]["state"]
        for key in a["params"]:
            assert torch.equal(a["params"][key], b["params"][key]), (name, key)
        assert torch.equal(a["table"], b["table"]), name
    assert workers[0]["divergence caught"] and workers[1]["divergence caught"]


def test_shards_are_uneven_so_exhausted_workers_take_part_with_empty_batches(workers):
    sizes = [len(s) for s in _shards()]
    assert sizes[0] != sizes[1] and sum(sizes) == N_EVENTS
    report = workers[0]["deepfm-hash"]["report"]
    assert report["n_steps"] == -(-max(sizes) // BATCH)
    assert [w["deepfm-hash"]["report"]["n_events_local"] for w in workers] == sizes


def test_local_sgd_averages_dense_weights_by_events_and_rows_over_their_workers(workers):
    n_buckets = LOCAL["n_buckets"]
    refs = [_make(LOCAL, batch_size=BATCH) for _ in range(WORLD)]
    for clf in refs:
        clf._encoder.register(FIELDS)
        clf.model_.add_fields(len(FIELDS))
    shards = _shards()
    for start in itertools.count(0, LOCAL_EVERY):
        chunks = [s[start : start + LOCAL_EVERY] for s in shards]
        if not any(chunks):
            break
        touched = []
        for clf, chunk in zip(refs, chunks):
            for x, y in chunk:
                clf.learn_one(x, y)
            clf.flush()
            touched.append({1 + stable_hash64(f, k) % n_buckets for x, _ in chunk for f, k, _ in parse_features(x)})
        n = [len(c) for c in chunks]
        with torch.no_grad():
            nets = [clf.model_ for clf in refs]
            for (name, p0), (_, p1) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
                avg = (p0 * n[0] + p1 * n[1]) / sum(n)
                p0.copy_(avg)
                p1.copy_(avg)
            tables = [net.embedding.weight for net in nets]
            for row in set.union(*touched):
                holders = [t for t, rows in zip(tables, touched) if row in rows]
                mean = sum(t[row] for t in holders) / len(holders)
                for t in tables:
                    t[row] = mean
    for rank in range(WORLD):
        _assert_same(workers[rank]["local_sgd"]["state"], refs[0], atol=1e-5)
    report = workers[0]["local_sgd"]["report"]
    assert report["n_steps"] == -(-max(len(s) for s in shards) // LOCAL_EVERY)


def test_resume_from_checkpoint_ends_where_an_uninterrupted_run_ends(workers):
    for rank in range(WORLD):
        res = workers[rank]["resume"]
        # Checkpoints every 48 events: the last one before the crash is the resume point.
        crash_events = WORLD * res["crash_at"]
        assert res["report"]["resumed_from_step"] == (crash_events // 48 * 48) // (WORLD * BATCH)
        full, resumed = res["full"], res["resumed"]
        for key in full["params"]:
            torch.testing.assert_close(resumed["params"][key], full["params"][key], atol=1e-6, rtol=0)
        torch.testing.assert_close(resumed["table"], full["table"], atol=1e-6, rtol=0)


# ------------------------------------------------------------ a dead worker


def test_a_killed_worker_makes_the_other_fail_fast_with_a_clear_error(tmp_path):
    timeout = 20
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    cmd = [
        sys.executable, "-m", "river_torchrec.distributed", "--n-events", "10000000", "--model", "lr",
        "--batch-size", "8", "--timeout", str(timeout), "--threads", "1", "--no-eval", "--log-every", "400",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=tmp_path, text=True,
        )
        for r in range(2)
    ]  # fmt: skip
    try:
        # Rank 0 prints progress once both workers are stepping together.
        deadline = time.monotonic() + 60
        line = ""
        while not line.startswith("step"):
            ready, _, _ = select.select([procs[0].stderr], [], [], max(0.0, deadline - time.monotonic()))
            assert ready and procs[0].poll() is None, "rank 0 printed no progress"
            line = procs[0].stderr.readline()
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=timeout + 30)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode == 1
    assert "river_torchrec.distributed: error: worker 0 of 2" in err
    assert "another worker probably died" in err
    assert waited < timeout + 30


# ------------------------------------------------------- without a process group


def test_shard_partitions_the_stream_by_key_and_deals_keyless_events_round_robin():
    events = [({"user_id": f"u{i % 7}", "i": i} if i % 3 else {"i": i}, i % 2 == 0) for i in range(60)]
    parts = [list(shard(events, r, 3)) for r in range(3)]
    assert sorted(x["i"] for p in parts for x, _ in p) == list(range(60))
    for r, part in enumerate(parts):
        assert [x["i"] for x, _ in part] == sorted(x["i"] for x, _ in part)  # order kept
        for x, _ in part:
            if "user_id" in x:
                assert stable_hash64("user_id", x["user_id"]) % 3 == r == owner(x["user_id"], 3, "user_id")
        keyless = [x["i"] for x, _ in part if "user_id" not in x]
        assert keyless == [i for k, i in enumerate(range(0, 60, 3)) if k % 3 == r]
    by_callable = [list(shard(events, r, 3, key=lambda x: x.get("user_id"))) for r in range(3)]
    assert sorted(x["i"] for p in by_callable for x, _ in p) == list(range(60))
    homes = {x["user_id"]: {r for r, p in enumerate(by_callable) for z, _ in p if z.get("user_id") == x["user_id"]}
             for x, _ in events if "user_id" in x}  # fmt: skip
    assert all(len(h) == 1 for h in homes.values())
    assert [len(list(shard(events, r, 2, key=None))) for r in range(2)] == [30, 30]


def test_shard_rejects_a_bad_rank_or_key():
    with pytest.raises(ValueError, match="rank"):
        list(shard([], 2, 2))
    with pytest.raises(ValueError, match="world_size"):
        list(shard([], 0, 0))
    with pytest.raises(TypeError, match="key"):
        list(shard([], 0, 1, key=3))


def test_trainer_rejects_local_sgd_with_dynamic_ids_and_a_missing_group():
    with pytest.raises(ValueError, match="embeddings='hash'"):
        DistributedCTR(CTRClassifier(embeddings="dynamic"), mode="local_sgd")
    with pytest.raises(ValueError, match="mode"):
        DistributedCTR(CTRClassifier(), mode="async")
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            DistributedCTR(CTRClassifier())


def test_checkpoint_state_round_trips_through_weights_only_loading(tmp_path):
    events = _events()[:200]
    params = {"model": "fm", "embeddings": "dynamic", "min_count": 2, "max_rows": 50}
    a = _make(params, "adam")
    for x, y in events[:120]:
        a.learn_one(x, y)
    torch.save(classifier_state(a), tmp_path / "state.pt")
    b = _make(params, "adam")
    load_classifier_state(b, torch.load(tmp_path / "state.pt", weights_only=True))
    for x, y in events[120:]:
        assert b.predict_proba_one(x) == a.predict_proba_one(x)
        a.learn_one(x, y)
        b.learn_one(x, y)
    _assert_same(_snapshot(b), a, atol=0)
