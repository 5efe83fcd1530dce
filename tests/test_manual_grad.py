"""The hand-written gradients of the built-in models equal autograd's."""

from __future__ import annotations

import pytest
import torch

from river_torchrec.nn import MODELS


def _model(name: str, n_fields: int = 5):
    torch.manual_seed(0)
    model = MODELS[name](embedding_dim=4, hidden_units=(8, 6), table={"seed": 3})
    model.add_fields(n_fields)
    keys = [(f"f{i % n_fields}", f"v{i}") for i in range(20)] + [("num", None)]
    model.embedding.lookup(keys, learn=True)
    with torch.no_grad():
        # Non-zero first-order weights and cross weights, so every term is exercised.
        model.embedding.weight[1:, 0] = torch.randn(model.embedding.capacity - 1) * 0.3
        model.embedding.weight[1:, 1:] *= 30
        for name_, p in model.named_parameters():
            if name_.startswith("cross"):
                p.copy_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 7])
def test_manual_gradients_match_autograd(name, batch):
    model = _model(name)
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 22, (batch, 5), generator=gen)
    ids[0, 1] = ids[0, 0]  # a row used twice in one event
    ids[-1, 2] = 0  # an absent field
    values = torch.rand(batch, 5, generator=gen) * 2
    d_logits = torch.randn(batch, generator=gen)

    logits = model(ids, values)
    (logits * d_logits).sum().backward()
    table = model.embedding
    auto_rows, auto_row_grads = table.last_rows, table.last_leaf.grad

    with torch.no_grad():
        manual_logits, cache = model.forward_cached(ids, values)
        grads, rows, row_grads = model.backward_cached(cache, d_logits)

    assert torch.allclose(manual_logits, logits.detach(), atol=1e-6)
    assert torch.equal(rows, auto_rows)
    assert torch.allclose(row_grads, auto_row_grads, atol=1e-5, rtol=1e-5)
    named = dict(model.named_parameters())
    assert set(grads) == set(named)
    for pname, p in named.items():
        assert torch.allclose(grads[pname], p.grad, atol=1e-5, rtol=1e-5), pname


@pytest.mark.parametrize("use_numpy", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_reusing_the_prediction_forward_pass_changes_nothing(name, use_numpy):
    import pickle

    from helpers import pair_stream

    from river_torchrec import CTRClassifier

    with_predict = CTRClassifier(model=name, max_rows=15)
    learn_only = CTRClassifier(model=name, max_rows=15)
    with_predict._use_numpy = learn_only._use_numpy = use_numpy
    numpy_twin = with_predict._numpy() is not None
    assert numpy_twin == (use_numpy and name != "dcnv2")  # DCN-v2 has no NumPy twin

    def memo():
        return with_predict._memo.numpy.entry if numpy_twin else with_predict._memo.entry

    for x, y in pair_stream(300, seed=4):
        with_predict.predict_proba_one(x)
        with_predict.learn_one(x, y)
        learn_only.learn_one(x, y)
    assert memo() is None  # consumed by learn_one
    with_predict.predict_proba_one({"a": "a1"})
    assert memo() is not None
    restored = pickle.loads(pickle.dumps(with_predict))
    assert restored._memo.entry is None and restored._memo.numpy is None
    for (n1, t1), (n2, t2) in zip(
        with_predict.model_.state_dict().items(), learn_only.model_.state_dict().items()
    ):
        assert n1 == n2 and torch.equal(t1, t2), n1


def test_autograd_and_manual_paths_learn_the_same_model():
    from helpers import pair_stream

    from river_torchrec import CTRClassifier

    manual = CTRClassifier(model="deepfm")
    auto = CTRClassifier(model="deepfm")
    # Same class; this instance falls back to autograd.
    auto.model_.supports_manual_grad = False
    for x, y in pair_stream(200, seed=5):
        assert manual.predict_proba_one(x)[True] == pytest.approx(auto.predict_proba_one(x)[True], abs=1e-5)
        manual.learn_one(x, y)
        auto.learn_one(x, y)
