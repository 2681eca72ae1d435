import numpy as np
import pytest
import torch

from fedrank.models.supermask import (
    SupermaskLinear,
    build_model,
    get_rankings,
    kept_count,
    set_rankings,
    supermask_layers,
)

SHAPE = (1, 8, 8)


def _mlp(seed: int = 0, k: float = 0.5) -> torch.nn.Module:
    return build_model("mlp", image_shape=SHAPE, num_classes=10, seed=seed, k=k)


def test_weights_are_frozen_signed_constants_and_scores_train() -> None:
    model = _mlp()
    for layer in supermask_layers(model).values():
        assert not layer.weight.requires_grad
        # Signed Kaiming constant, scaled by 1/sqrt(k) for the kept fraction (edge-popup).
        sigma = np.sqrt(2.0 / (0.5 * layer.weight[0].numel()))
        np.testing.assert_allclose(layer.weight.abs().numpy(), sigma, rtol=1e-6)
        assert layer.scores.requires_grad
    assert model.fc1.bias is None


def test_mask_keeps_top_k_of_each_layer() -> None:
    layer = SupermaskLinear(20, 10, k=0.3, generator=torch.Generator().manual_seed(0))
    mask = layer.masked_weight() != 0
    assert int(mask.sum()) == kept_count(200, 0.3) == 60
    kept_scores = layer.scores.detach()[mask]
    dropped_scores = layer.scores.detach()[~mask]
    assert kept_scores.min() > dropped_scores.max()


def test_gradient_reaches_scores_straight_through() -> None:
    model = _mlp()
    x = torch.rand(4, *SHAPE)
    model(x).sum().backward()
    for layer in supermask_layers(model).values():
        assert layer.scores.grad is not None
        # Straight through: even pruned edges get a gradient.
        pruned = layer.masked_weight().detach() == 0
        assert layer.scores.grad[pruned].abs().sum() > 0


def test_rankings_round_trip_and_order_the_scores() -> None:
    model = _mlp()
    rng = np.random.default_rng(1)
    wanted = {name: rng.permutation(r.size) for name, r in get_rankings(model).items()}
    set_rankings(model, wanted)
    got = get_rankings(model)
    for name in wanted:
        np.testing.assert_array_equal(got[name], wanted[name])
        scores = supermask_layers(model)[name].scores.detach().flatten().numpy()
        assert np.all(np.diff(scores[np.argsort(wanted[name])]) > 0)


def test_same_seed_same_network_other_seed_other_network() -> None:
    a, b, c = _mlp(seed=3), _mlp(seed=3), _mlp(seed=4)
    x = torch.rand(2, *SHAPE)
    torch.testing.assert_close(a(x), b(x))
    assert not torch.allclose(a(x), c(x))


def test_cnn_on_both_image_sizes() -> None:
    for shape in [(1, 8, 8), (1, 28, 28)]:
        model = build_model("cnn", image_shape=shape, num_classes=10, seed=0, k=0.5)
        assert model(torch.rand(3, *shape)).shape == (3, 10)


def test_dense_baseline_has_trainable_weights_and_no_scores() -> None:
    model = build_model("mlp", image_shape=SHAPE, num_classes=10, seed=0, k=0.5, dense=True)
    assert not supermask_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    again = build_model("mlp", image_shape=SHAPE, num_classes=10, seed=0, k=0.5, dense=True)
    torch.testing.assert_close(model.fc1.weight, again.fc1.weight)


def test_set_rankings_rejects_other_layers() -> None:
    with pytest.raises(ValueError, match="do not match"):
        set_rankings(_mlp(), {"fc9.weight": np.arange(3)})
