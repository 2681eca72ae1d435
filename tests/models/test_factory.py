import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedrank.errors import ConfigError
from fedrank.models.factory import PACKAGED, build_network, resolve_factory
from fedrank.models.supermask import layer_sizes, supermask_layers

SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


USER_MODELS = """
import random

import numpy as np
import torch
from torch import nn


def small(*, input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(4 * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes),
    )


def lazy(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(12), nn.ReLU(), nn.Linear(12, num_classes))


def tabular(*, input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes)


class Zoo:
    @staticmethod
    def build(*, input_shape, num_classes):
        return small(input_shape=input_shape, num_classes=num_classes)


NOT_CALLABLE = 3


def raises(*, input_shape, num_classes):
    raise ValueError("no such depth")


def not_a_module(*, input_shape, num_classes):
    return [nn.Linear(2, 2)]


def wrong_classes(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes + 1))


def tuple_output(*, input_shape, num_classes):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(int(np.prod(input_shape)), num_classes)

        def forward(self, x):
            return self.fc(x.flatten(1)), x

    return Pair()


def bad_forward(*, input_shape, num_classes):
    return nn.Linear(5, num_classes)  # no flatten, wrong width


def nothing_to_wrap(*, input_shape, num_classes):
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Parameter(torch.randn(int(np.prod(input_shape)), num_classes))

        def forward(self, x):
            return x.flatten(1) @ self.proj

    return Fixed()


def no_parameters(*, input_shape, num_classes):
    class Pool(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :num_classes]

    return Pool()


def numpy_random(*, input_shape, num_classes):
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(np.random.rand(*model[1].weight.shape)))
    return model
"""


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable user package ``userpkg_<n>`` outside fedrank; returns its name."""
    name = f"userpkg_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent(USER_MODELS))
    (package / "broken.py").write_text("raise RuntimeError('half-written module')\n")
    (package / "needs_dep.py").write_text("import fedrank_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _build(spec: str, *, supermask: bool = True, shape: tuple[int, ...] = SHAPE) -> nn.Module:
    return build_network(
        spec, input_shape=shape, num_classes=10, seed=0, k=0.5, supermask=supermask
    )


def test_user_factory_for_fedavg_and_frl(user_package: str) -> None:
    spec = f"{user_package}.models:small"
    dense = _build(spec, supermask=False)
    assert all(p.requires_grad for p in dense.parameters())
    assert dense[1].running_mean is not None  # FedAvg trains the module as built
    frl = _build(spec)
    assert layer_sizes(frl) == {"0": 36, "5": 256 * 16, "7": 160}
    assert frl(torch.rand(3, *SHAPE)).shape == (3, 10)
    # The seed alone defines both networks, in any process.
    for a, b in ((dense, _build(spec, supermask=False)), (frl, _build(spec))):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name


def test_dotted_attribute_lazy_layers_and_a_bare_layer(user_package: str) -> None:
    assert resolve_factory(f"{user_package}.models:Zoo.build") is not None
    lazy = _build(f"{user_package}.models:lazy")
    assert layer_sizes(lazy) == {"1": 64 * 12, "3": 120}
    again = _build(f"{user_package}.models:lazy", supermask=False)
    assert torch.equal(
        again[1].weight, _build(f"{user_package}.models:lazy", supermask=False)[1].weight
    )
    # A model that is one layer gets a ranking layer with a name.
    assert list(supermask_layers(_build(f"{user_package}.models:tabular", shape=(8,)))) == ["0"]


def test_packaged_models_are_ordinary_factories() -> None:
    assert set(PACKAGED) == {"mlp", "cnn"}
    for name in PACKAGED:
        plain, full = _build(name), _build(f"fedrank.models.zoo:{name}")
        assert list(layer_sizes(plain)) == list(layer_sizes(full))
        for x, y in zip(plain.state_dict().values(), full.state_dict().values(), strict=True):
            assert torch.equal(x, y)
    cnn = _build("cnn")
    assert list(layer_sizes(cnn)) == ["conv1", "conv2", "fc1", "fc2"]
    assert [n for n, p in cnn.named_parameters() if p.requires_grad] == [
        "conv1.scores", "conv2.scores", "fc1.scores", "fc2.scores"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("attr", "supermask", "message"),
    [
        ("models:nope", True, r"has no attribute 'nope'"),
        ("models:NOT_CALLABLE", True, r"is not callable \(it is a int\)"),
        ("models:raises", True, r"raised ValueError: no such depth"),
        ("models:not_a_module", True, r"returned a list, not a torch.nn.Module"),
        ("models:wrong_classes", False, r"gives outputs \(2, 11\), expected logits \(2, 10\)"),
        ("models:tuple_output", False, r"forward returned a tuple"),
        ("models:bad_forward", False, r"forward of a batch \(2, 1, 8, 8\) raised RuntimeError"),
        ("models:nothing_to_wrap", True, r"no layer FRL can wrap"),
        ("models:no_parameters", False, r"no trainable parameter"),
        ("models:numpy_random", False, r"different weights for the same seed"),
        ("broken:anything", True, r"importing module '.*broken'.* raised RuntimeError"),
        ("needs_dep:anything", True, r"failed: ModuleNotFoundError: .*fedrank_no_such_dep"),
    ],
)
def test_bad_factories_are_one_line_model_errors(
    user_package: str, attr: str, supermask: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _build(f"{user_package}.{attr}", supermask=supermask)
    assert info.value.field == "model"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet", r"expected a packaged model \(mlp, cnn\) or 'package.module:factory'"),
        ("fedrank_no_such_pkg.models:net", r"cannot import module 'fedrank_no_such_pkg.models'"),
        (":net", r"expected a packaged model"),
    ],
)
def test_unknown_names_and_modules(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _build(spec)
    assert info.value.field == "model"


def test_k_is_checked_for_every_model() -> None:
    for supermask in (True, False):
        with pytest.raises(ConfigError) as info:
            build_network("mlp", input_shape=SHAPE, num_classes=10, seed=0, k=0.0,
                          supermask=supermask)  # fmt: skip
        assert info.value.field == "k"


def test_building_does_not_touch_the_global_generator() -> None:
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    _build("cnn")
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())
