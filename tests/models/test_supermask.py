import copy
import hashlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from fedrank.data.source import DataSource, load_image_data
from fedrank.data.splits import take_records
from fedrank.errors import ConfigError
from fedrank.models.supermask import (
    SupermaskConv1d,
    SupermaskConv3d,
    build_model,
    get_rankings,
    kept_count,
    layer_sizes,
    set_rankings,
    supermask_layers,
    to_supermask,
)
from fedrank.training import evaluate, numpy_state, train_local

SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


class UserNet(nn.Module):
    """A user's module: biased and grouped convolutions, norms, a bare parameter, attention."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, stride=2, padding=1)  # 8x8 -> 4x4, with a bias
        self.grouped = nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2, bias=False,
                                 padding_mode="reflect")  # fmt: skip
        self.bn = nn.BatchNorm2d(4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)  # its projections stay dense
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.ReLU())
        self.out = nn.Linear(16, 10)
        self.temperature = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(F.relu(self.grouped(F.relu(self.stem(x)))))
        h = self.head(h)
        h = h + self.attn(h[:, None], h[:, None], h[:, None])[0][:, 0]
        return self.out(h) / self.temperature


def _user_net(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UserNet()


def _mlp(seed: int = 0, k: float = 0.5) -> nn.Module:
    return build_model("mlp", image_shape=SHAPE, num_classes=10, seed=seed, k=k)


def test_wrapping_a_user_module_gives_layers_in_module_order() -> None:
    net = to_supermask(_user_net(), k=0.5, seed=1)
    assert layer_sizes(net) == {"stem": 36, "grouped": 72, "head.1": 64 * 16, "out": 160}
    for layer in supermask_layers(net).values():
        assert not layer.weight.requires_grad
        assert layer.scores.requires_grad
        assert layer.bias is None  # FRL's layers have no bias
        # Signed Kaiming constant, scaled by 1/sqrt(k) for the kept fraction (edge-popup).
        sigma = np.sqrt(2.0 / (0.5 * layer.weight[0].numel()))
        np.testing.assert_allclose(layer.weight.abs().numpy(), sigma, rtol=1e-6)
    # Only scores train; everything else is kept as built, frozen.
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "stem.scores", "grouped.scores", "head.1.scores", "out.scores"
    ]  # fmt: skip
    original = _user_net()
    assert torch.equal(net.temperature, original.temperature)
    assert torch.equal(net.attn.in_proj_weight, original.attn.in_proj_weight)
    assert type(net.attn.out_proj) is type(original.attn.out_proj)
    # Batch statistics always: no running state outside the ranking.
    assert net.bn.running_mean is None
    assert not net.bn.track_running_stats
    assert net(torch.rand(3, *SHAPE)).shape == (3, 10)


def test_convolutions_keep_their_geometry() -> None:
    original = _user_net()
    net = to_supermask(original, k=0.3, seed=2)
    x = torch.rand(2, 4, 4, 4)
    for name in ("stem", "grouped"):
        layer = supermask_layers(net)[name]
        reference = copy.deepcopy(getattr(original, name))
        reference.weight = nn.Parameter(layer.masked_weight().detach())
        reference.bias = None
        inputs = x[:, :1].repeat(1, 1, 2, 2) if name == "stem" else x
        torch.testing.assert_close(layer(inputs), reference(inputs), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("conv", "shape", "wrapped"),
    [
        (nn.Conv1d(3, 5, 3, stride=2, padding=1, padding_mode="circular"), (2, 3, 9),
         SupermaskConv1d),
        (nn.Conv3d(2, 4, 3, padding=1, dilation=1, groups=2), (2, 2, 4, 4, 4), SupermaskConv3d),
    ],
)  # fmt: skip
def test_conv1d_and_conv3d(conv: nn.Module, shape: tuple[int, ...], wrapped: type) -> None:
    net = to_supermask(nn.Sequential(conv), k=0.5, seed=0)
    layer = net[0]
    assert isinstance(layer, wrapped)
    reference = copy.deepcopy(conv)
    reference.weight = nn.Parameter(layer.masked_weight().detach())
    reference.bias = None
    x = torch.rand(shape)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("k", [0.01, 0.3, 0.5, 0.99, 1.0])
def test_mask_keeps_exactly_the_top_k_of_each_layer(k: float) -> None:
    net = to_supermask(_user_net(), k=k, seed=3)
    set_rankings(
        net, {n: np.random.default_rng(4).permutation(size) for n, size in layer_sizes(net).items()}
    )
    for layer in supermask_layers(net).values():
        mask = layer.mask() != 0
        assert int(mask.sum()) == kept_count(layer.weight.numel(), k)
        if not mask.all():
            assert layer.scores.detach()[mask].min() > layer.scores.detach()[~mask].max()


def test_same_module_and_seed_give_the_same_network_bit_for_bit() -> None:
    a, b = to_supermask(_user_net(), k=0.5, seed=7), to_supermask(_user_net(), k=0.5, seed=7)
    c = to_supermask(_user_net(), k=0.5, seed=8)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(a.stem.weight, c.stem.weight)
    inputs = torch.rand(2, *SHAPE)
    assert torch.equal(a(inputs), b(inputs))


def test_wrapping_leaves_the_module_alone_and_shares_shared_layers() -> None:
    shared = nn.Linear(4, 4)
    module = nn.Sequential(shared, nn.ReLU(), shared)
    before = copy.deepcopy(module.state_dict())
    net = to_supermask(module, k=0.5, seed=0)
    assert all(torch.equal(v, module.state_dict()[n]) for n, v in before.items())
    assert isinstance(module[0], nn.Linear)
    assert module[0].bias is not None
    assert net[0] is net[2]
    assert list(supermask_layers(net)) == ["0"]


def test_no_layer_to_wrap_and_bad_k() -> None:
    with pytest.raises(ConfigError, match="no Linear or Conv") as info:
        to_supermask(nn.Sequential(nn.Flatten(), nn.ReLU()), k=0.5, seed=0)
    assert info.value.field == "model"
    with pytest.raises(ConfigError) as bad_k:
        to_supermask(nn.Linear(2, 2), k=1.5, seed=0)
    assert bad_k.value.field == "k"


def test_gradient_reaches_scores_straight_through() -> None:
    model = _mlp()
    model(torch.rand(4, *SHAPE)).sum().backward()
    for layer in supermask_layers(model).values():
        assert layer.scores.grad is not None
        # Straight through: pruned edges get a gradient too, the kept edges' one times w.
        pruned = layer.masked_weight().detach() == 0
        assert layer.scores.grad[pruned].abs().sum() > 0


def test_score_gradient_is_the_weight_gradient_times_the_weight() -> None:
    layer = supermask_layers(to_supermask(nn.Linear(6, 3), k=0.5, seed=0))[""]  # the root
    x = torch.rand(5, 6)
    layer(x).square().sum().backward()
    weight = layer.masked_weight().detach().requires_grad_()
    F.linear(x, weight).square().sum().backward()
    assert weight.grad is not None
    assert layer.scores.grad is not None
    torch.testing.assert_close(layer.scores.grad, weight.grad * layer.weight)


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


def test_set_rankings_rejects_other_layers() -> None:
    with pytest.raises(ValueError, match="do not match"):
        set_rankings(_mlp(), {"fc9": np.arange(3)})


def _digest(state: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key]).tobytes())
    return h.hexdigest()[:16]


# The packaged models as built, bit for bit (digests computed with the implementation
# before user models, commit a4bc889), and what one epoch of training makes of them (seed
# 3, k 0.5, 64 MNIST-5k training examples drawn by `take_records` with seed 0, batch 16,
# one torch thread): the mean training loss and the loss on 512 test examples. Training
# is compared within a tolerance, not by digest: float32 products round differently with
# each CPU's vector instructions (the trained digests of commit a4bc889 differ on an AMD
# EPYC running torch's AVX2 kernels), while a change to a model or to its training moves
# these losses by far more than 1e-4.
GOLDEN = {
    ("mlp", False): ("7dbe4f54b75c6f9c", 2.2926799, 1.9650309),
    ("mlp", True): ("4f46a1556a04e6f4", 2.3003185, 2.2829001),
    ("cnn", False): ("5b597f63ac0703e7", 2.4550274, 2.1575816),
    ("cnn", True): ("d5f7a115c4877b6f", 2.2884492, 2.2397995),
}


@pytest.mark.parametrize(("name", "dense"), list(GOLDEN))
def test_packaged_models_are_unchanged(name: str, dense: bool) -> None:
    ds = load_image_data(DataSource("mnist5k", test_fraction=0.2))
    model = build_model(
        name, image_shape=ds.image_shape, num_classes=10, seed=3, k=0.5, dense=dense
    )
    built = _digest(numpy_state(model) if dense else get_rankings(model))
    result = train_local(  # one thread (the fixture): float sums depend on the count
        model, take_records(ds.train, 64, seed=0), epochs=1, lr=0.1 if dense else 1.0,
        momentum=0.9, batch_size=16, generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    test_loss, _ = evaluate(model, take_records(ds.test, 512, seed=0))
    digest, golden_train_loss, golden_test_loss = GOLDEN[(name, dense)]
    assert built == digest
    assert result.loss == pytest.approx(golden_train_loss, rel=1e-4)
    assert test_loss == pytest.approx(golden_test_loss, rel=1e-4)
