import numpy as np
import pytest
import torch
from torch import nn

from fedrank.data.source import DataSource, load_image_data
from fedrank.data.splits import ImageSplit
from fedrank.models.factory import build_network
from fedrank.models.supermask import get_rankings, set_rankings, to_supermask
from fedrank.training import (
    MomentumSGD,
    evaluate,
    load_numpy_state,
    numpy_state,
    train_local,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _subset(size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    ds = load_image_data(DataSource("mnist5k", test_fraction=0.2))
    # At random: the packaged set is sorted by label.
    idx = np.random.default_rng(seed).choice(len(ds.train), size, replace=False)
    return ImageSplit(ds.train.images[idx], ds.train.labels[idx]), ds.test


def _train(model: nn.Module, data: ImageSplit, *, lr: float, seed: int = 0) -> None:
    train_local(
        model, data, epochs=2, lr=lr, momentum=0.9, batch_size=16,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def test_frl_on_the_wrapped_packaged_mlp_learns() -> None:
    train, test = _subset(400, seed=0)
    model = build_network("mlp", input_shape=(1, 28, 28), num_classes=10, seed=0, k=0.5,
                          supermask=True)  # fmt: skip
    initial = get_rankings(model)
    _, before = evaluate(model, test)
    _train(model, train, lr=1.0)
    _, after = evaluate(model, test)
    assert before < 0.2 < 0.6 < after  # chance is 0.1
    assert any(not np.array_equal(initial[n], r) for n, r in get_rankings(model).items())


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3), nn.Flatten()
        )
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.body(x))
        return out


@pytest.mark.parametrize("frl", [False, True])
def test_dropout_is_reproducible_and_leaves_the_global_generator(frl: bool) -> None:
    train, _ = _subset(64, seed=1)

    def run() -> dict[str, np.ndarray]:
        torch.manual_seed(123)  # whatever the process did before must not matter
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model: nn.Module = DropoutNet()
        if frl:
            model = to_supermask(model, k=0.5, seed=0)
        _train(model, train, lr=0.5 if frl else 0.05, seed=4)
        return get_rankings(model) if frl else numpy_state(model)

    first = run()
    after_first = torch.rand(2)
    second = run()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    torch.manual_seed(123)
    torch.testing.assert_close(torch.rand(2), after_first)  # train_local restored it


def test_dense_state_carries_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model, other = DropoutNet(), DropoutNet()
    train, _ = _subset(32, seed=2)
    _train(model, train, lr=0.05)
    state = numpy_state(model)
    assert "body.1.running_mean" in state
    assert "body.1.num_batches_tracked" not in state
    load_numpy_state(other, state)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(other.eval()(x), model.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        load_numpy_state(other, {k: v for k, v in state.items() if "running" not in k})


def test_frl_round_trip_of_a_user_model_with_batchnorm() -> None:
    train, _ = _subset(64, seed=3)
    net = to_supermask(DropoutNet(), k=0.3, seed=5)
    start = get_rankings(net)
    _train(net, train, lr=0.5)
    trained = get_rankings(net)
    set_rankings(net, start)  # a client rebuilding from the global ranking
    again = to_supermask(DropoutNet(), k=0.3, seed=5)
    _train(again, train, lr=0.5)
    _train(net, train, lr=0.5)
    for name, ranks in get_rankings(again).items():
        np.testing.assert_array_equal(ranks, get_rankings(net)[name])
        assert not np.array_equal(ranks, start[name])
        np.testing.assert_array_equal(np.sort(ranks), np.arange(ranks.size))
    assert trained.keys() == start.keys()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_momentum_sgd_steps_exactly_as_torch_sgd(momentum: float) -> None:
    torch.manual_seed(0)
    ours, theirs = DropoutNet(), DropoutNet()
    theirs.load_state_dict(ours.state_dict())
    theirs.fc.weight.requires_grad_(False)  # a parameter without a gradient is skipped
    ours.fc.weight.requires_grad_(False)
    mine = MomentumSGD(list(ours.parameters()), lr=0.05, momentum=momentum)
    reference = torch.optim.SGD(list(theirs.parameters()), lr=0.05, momentum=momentum)
    start = {name: t.clone() for name, t in ours.state_dict().items()}
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(4):
        for model, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)  # the same dropout in both
                torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.fc.bias, start["fc.bias"])  # it trained
    assert torch.equal(ours.fc.weight, start["fc.weight"])  # without a gradient: untouched
