"""The compiled selection and ranking (fedrank/models/_topk.c) against the torch path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.models import topk
from fedrank.models.supermask import get_rankings, to_supermask
from fedrank.models.topk import TopKMask, order_keys, rank_vector

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_compiled_selection_was_built() -> None:
    # setup.py builds it where a C compiler is at hand (every machine this suite runs on);
    # a silent fallback to torch would make FRL's local training about 2x slower.
    assert topk.COMPILED_SELECTION, (
        "fedrank.models._topk was not built (a C compiler and Python's headers are needed: "
        "reinstall with `pip install -e .` once gcc is installed)"
    )


def bits(t: torch.Tensor) -> np.ndarray:
    """The float32 bit patterns (-0.0 differs from +0.0)."""
    return t.detach().contiguous().view(torch.int32).numpy()


def expected(scores: torch.Tensor, weight: torch.Tensor, keep: int) -> torch.Tensor:
    """The torch path's masked weight: its exact top-k mask times the weight."""
    return TopKMask(scores.numel(), keep)(scores).mul_(weight)


def signed_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    signs = rng.integers(0, 2, shape) * 2 - 1  # negative weights: 0 * w is -0.0
    return torch.from_numpy((signs * 0.05).astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(
    n=st.sampled_from([1, 7, 63, 64, 65, 129, 500, 5000, 12_001, 70_000]),
    k=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31),
    steps=st.integers(1, 10),
    jump=st.floats(0.0, 0.5),
    tie=st.booleans(),
    hint=st.sampled_from(["none", "wrong"]),
)
def test_the_live_masked_weight_is_exact_after_every_step(
    n: int, k: float, seed: int, steps: int, jump: float, tie: bool, hint: str
) -> None:
    # An optimiser's random walk on scores updated in place, as in training: most move a
    # little, a few jump far, some steps copy the boundary value onto another (a tie).
    rng = np.random.default_rng(seed)
    keep = min(n, max(1, round(k * n)))
    weight = signed_weight(rng, (n,))
    scores = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    selector = TopKMask(n, keep)
    if hint == "wrong":
        selector.hint(threshold=3.0, density=1e9)
    for _ in range(steps):
        step = scores.numpy()
        step += rng.normal(0, 0.01, n).astype(np.float32)
        jumpers = rng.random(n) < jump * 0.01
        step[jumpers] = rng.standard_normal(int(jumpers.sum())).astype(np.float32)
        if tie and keep < n:
            order = np.argsort(step, kind="stable")
            step[order[n - keep - 1]] = step[order[n - keep]]
        live = selector.live(scores, weight)
        np.testing.assert_array_equal(bits(live), bits(expected(scores, weight, keep)))
        assert int((live != 0).sum()) == keep


def test_an_update_rewrites_the_same_tensor_and_a_fresh_call_copies_it() -> None:
    rng = np.random.default_rng(0)
    weight, scores = signed_weight(rng, (5000,)), torch.randn(5000)
    selector = TopKMask(5000, 1000)
    first = selector.live(scores, weight)
    scores.add_(torch.randn(5000))
    assert selector.live(scores, weight) is first
    copy = selector.masked(scores, weight)
    assert copy is not first
    assert torch.equal(copy, first)


@pytest.mark.parametrize(
    ("module", "shape"),
    [(torch.nn.Linear(64, 32, bias=False), (4, 64)), (torch.nn.Conv2d(3, 8, 3), (2, 3, 9, 9))],
)
def test_a_graph_holding_the_former_masked_weight_fails_instead_of_a_wrong_gradient(
    module: torch.nn.Module, shape: tuple[int, ...]
) -> None:
    layer = to_supermask(module, k=0.5, seed=0)
    x = torch.randn(shape, requires_grad=True)  # its gradient needs the masked weight
    first = layer(x).sum()
    with torch.no_grad():
        layer.scores.add_(torch.randn_like(layer.scores))  # many edges change status
    layer(x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()  # type: ignore[no-untyped-call]  # untyped in torch


def test_a_weight_changed_in_place_is_followed() -> None:
    rng = np.random.default_rng(1)
    weight, scores = signed_weight(rng, (3000,)), torch.randn(3000)
    selector = TopKMask(3000, 300)
    selector.live(scores, weight)
    weight.mul_(-2.0)
    np.testing.assert_array_equal(
        bits(selector.live(scores, weight)), bits(expected(scores, weight, 300))
    )


def test_without_the_kernel_the_same_answer_in_new_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(topk, "_masked_update", None)
    rng = np.random.default_rng(2)
    weight, scores = signed_weight(rng, (4000,)), torch.randn(4000)
    selector = TopKMask(4000, 1500)
    first = selector.live(scores, weight)
    second = selector.live(scores, weight)
    assert first is not second
    np.testing.assert_array_equal(bits(first), bits(expected(scores, weight, 1500)))


@pytest.mark.parametrize(
    ("module", "shape"),
    [(torch.nn.Linear(40, 12, bias=False), (3, 5, 40)), (torch.nn.Conv2d(2, 6, 3), (2, 2, 7, 7))],
)
def test_the_scores_get_the_straight_through_gradient_added_to_their_own(
    module: torch.nn.Module, shape: tuple[int, ...]
) -> None:
    # The kept masked weight's hook against the straight-through node (masked_weight),
    # with a second term on the scores themselves (as FedProx's) that must add up.
    layer = to_supermask(module, k=0.3, seed=2)
    x = torch.randn(shape, requires_grad=True)

    def forward(weight: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, torch.nn.Linear):
            return torch.nn.functional.linear(x, weight)
        return layer._conv_forward(x, weight, None)  # type: ignore[operator]

    for step in range(2):  # the second step reuses the kept tensor and its hook
        layer.scores.grad, x.grad = None, None
        (layer(x).square().sum() + layer.scores.sum()).backward()  # type: ignore[no-untyped-call]
        kept = (x.grad, layer.scores.grad)
        layer.scores.grad, x.grad = None, None
        (forward(layer.masked_weight()).square().sum() + layer.scores.sum()).backward()  # type: ignore[no-untyped-call]
        assert kept[0] is not None
        assert kept[1] is not None
        assert torch.equal(kept[0], x.grad), step
        assert torch.equal(kept[1], layer.scores.grad), step
        with torch.no_grad():
            layer.scores.add_(torch.randn_like(layer.scores))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_training_ranks_the_same_with_and_without_the_kernel(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedrank.data.splits import ImageSplit
    from fedrank.models.supermask import build_model
    from fedrank.training import train_local

    rng = np.random.default_rng(3)
    data = ImageSplit(
        rng.standard_normal((64, 1, 12, 12)).astype(np.float32),
        rng.integers(0, 10, 64).astype(np.int64),
    )

    def ranking() -> dict[str, np.ndarray]:
        model = build_model(name, image_shape=(1, 12, 12), num_classes=10, seed=4, k=0.5)
        train_local(
            model,
            data,
            epochs=2,
            lr=1.0,
            momentum=0.9,
            batch_size=16,
            generator=torch.Generator().manual_seed(5),
        )
        return get_rankings(model)

    compiled = ranking()
    monkeypatch.setattr(topk, "_masked_update", None)
    monkeypatch.setattr(topk, "_rank_into", None)
    plain = ranking()
    assert compiled.keys() == plain.keys()
    for layer in compiled:
        np.testing.assert_array_equal(compiled[layer], plain[layer])


@pytest.mark.parametrize("n", [1, 2, 255, 256, 65_535, 65_536, 70_001])
def test_the_radix_rank_equals_a_stable_sort_of_the_keys(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.standard_normal(n).astype(np.float32)
    values[rng.random(n) < 0.2] = 0.5  # ties
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45]
    values[rng.integers(0, n, min(n, 30))] = rng.choice(special, min(n, 30))
    scores = torch.from_numpy(values)
    order = torch.sort(order_keys(scores), stable=True).indices
    reference = torch.empty_like(order).scatter_(0, order, torch.arange(n))
    assert torch.equal(rank_vector(scores), reference)
    assert torch.equal(rank_vector(scores.view(-1, 1)), reference)  # any shape, flattened


def test_the_kernels_refuse_what_they_cannot_read() -> None:
    from fedrank.models._topk import masked_update
    from fedrank.models._topk import rank_vector as compiled_rank

    f32, status = np.zeros(8, np.float32), np.zeros(8, np.uint8)
    with pytest.raises(TypeError, match="scores: expected a contiguous float32"):
        masked_update(np.zeros(8), f32, f32.copy(), status, 4, 0.0, 1.0)
    with pytest.raises(ValueError, match="same number of entries"):
        masked_update(f32, f32, f32.copy(), np.zeros(7, np.uint8), 4, 0.0, 1.0)
    with pytest.raises(ValueError, match="keep must lie in"):
        masked_update(f32, f32, f32.copy(), status, 9, 0.0, 1.0)
    with pytest.raises(ValueError, match="density be positive"):
        masked_update(f32, f32, f32.copy(), status, 4, 0.0, float("nan"))
    with pytest.raises(TypeError, match="ranks: expected a contiguous int64"):
        compiled_rank(f32, np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="same size"):
        compiled_rank(f32, np.zeros(9, np.int64))
    with pytest.raises(ValueError, match="not C-contiguous"):
        compiled_rank(f32, np.zeros(8, np.int64)[::-1])  # not contiguous


def test_copies_and_pickles_keep_their_own_masked_weight() -> None:
    import copy
    import pickle

    layer = to_supermask(torch.nn.Linear(300, 200, bias=False), k=0.4, seed=6)
    x = torch.randn(3, 300)
    layer(x)  # the original now keeps a masked weight
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert twin.selector._live is None
        with torch.no_grad():
            twin.scores.mul_(-1.0)  # the twin's mask is now the complement's
        expected = torch.nn.functional.linear(x, twin.masked_weight())
        assert torch.equal(twin(x), expected)
        assert not torch.equal(twin(x), layer(x))
