"""Models from factories: the packaged ``mlp``/``cnn`` or a user's ``package.module:factory``.

Calling convention
------------------
A factory is any importable callable, called with keyword arguments only::

    factory(input_shape=(C, H, W), num_classes=K) -> torch.nn.Module

``input_shape`` is the shape of one example as the data layer gives it (a tuple of
ints, (channels, height, width) for images) and ``num_classes`` the number of
labels. The returned module must map a float32 batch of shape ``(B, *input_shape)``
to logits of shape ``(B, K)``. The factory's module must be importable in every
process that builds the model (the server and each client): installed, or on
``PYTHONPATH``. Build the model on the CPU and draw random numbers only from
torch's global generator (PyTorch's default initialisation does): fedrank calls
the factory under a forked generator seeded with the run's seed, so the seed alone
defines the initial weights, in every process. A factory that gives different
weights for the same seed is refused.

FedAvg trains the module as the factory built it; FRL wraps it with
:func:`fedrank.models.supermask.to_supermask` (Linear and Conv layers become
supermask layers, everything else is frozen).

Every problem with a factory is a one-line ``ConfigError`` naming the field
``model``, raised when the model is first built (before any round starts).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from fedrank.errors import ConfigError
from fedrank.models import zoo
from fedrank.models.supermask import WRAPPED_TYPES, check_k, to_supermask, wrappable_layers

ModelFactory = Callable[..., nn.Module]

PACKAGED: Mapping[str, ModelFactory] = MappingProxyType({"mlp": zoo.mlp, "cnn": zoo.cnn})
"""Packaged factories by name (a scenario's ``model = "mlp"``)."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def resolve_factory(spec: str) -> ModelFactory:
    """The factory a ``model`` setting names: a packaged name or ``package.module:attr``.

    ``attr`` may be dotted (``pkg.models:Nets.small``).

    Raises
    ------
    ConfigError
        Unknown name, module that cannot be imported, missing attribute, or an
        attribute that is not callable (field ``model``).
    """
    if spec in PACKAGED:
        return PACKAGED[spec]
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise ConfigError(
            "model",
            f"expected a packaged model ({', '.join(PACKAGED)}) or 'package.module:factory',"
            f" got {spec!r}",
        )
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or (exc.name and module_name.startswith(exc.name + ".")):
            raise ConfigError(
                "model", f"cannot import module {module_name!r} ({spec!r}): {_one_line(exc)}"
            ) from exc
        raise ConfigError(
            "model", f"importing module {module_name!r} ({spec!r}) failed: {_one_line(exc)}"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            "model", f"importing module {module_name!r} ({spec!r}) raised {_one_line(exc)}"
        ) from exc
    path = module_name
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError("model", f"{path!r} has no attribute {part!r} ({spec!r})")
        target, path = getattr(target, part), f"{path}.{part}"
    if not callable(target):
        raise ConfigError("model", f"{spec!r} is not callable (it is a {type(target).__name__})")
    return target


def _call_factory(
    spec: str, factory: ModelFactory, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    call = f"{spec}(input_shape={input_shape}, num_classes={num_classes})"
    try:
        module: object = factory(input_shape=input_shape, num_classes=num_classes)
    except ConfigError as exc:
        if exc.field == "model":
            raise
        raise ConfigError("model", f"{call} raised {_one_line(exc)}") from exc
    except Exception as exc:
        raise ConfigError("model", f"{call} raised {_one_line(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise ConfigError(
            "model", f"{call} returned a {type(module).__name__}, not a torch.nn.Module"
        )
    return module


@torch.no_grad()
def check_output(
    model: nn.Module, *, spec: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Raise ``ConfigError('model')`` unless ``model`` maps a batch of 2 to logits (2, K)."""
    batch = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        out = model(batch)
    except Exception as exc:
        raise ConfigError(
            "model", f"{spec}: forward of a batch {tuple(batch.shape)} raised {_one_line(exc)}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            "model",
            f"{spec}: forward returned a {type(out).__name__}, expected a tensor of logits"
            f" (2, {num_classes})",
        )
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(
            "model",
            f"{spec}: a batch {tuple(batch.shape)} gives outputs {tuple(out.shape)},"
            f" expected logits (2, {num_classes}) (one per class)",
        )


def _seeded_build(
    spec: str, factory: ModelFactory, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    # The whole build, lazy modules' first forward included, draws from the seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _call_factory(spec, factory, input_shape, num_classes)
        check_output(module, spec=spec, input_shape=input_shape, num_classes=num_classes)
    return module


def _check_same(spec: str, a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for name, value in sa.items():
        other = sb.get(name)
        if not isinstance(value, torch.Tensor) or not isinstance(other, torch.Tensor):
            continue  # extra state that is not a tensor: nothing to compare
        if value.shape != other.shape or not torch.equal(value, other):
            raise ConfigError(
                "model",
                f"{spec} built different weights for the same seed ({name!r}): draw random"
                " numbers only from torch's global generator, which fedrank seeds",
            )


def build_network(
    spec: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    k: float,
    supermask: bool,
) -> nn.Module:
    """The model ``spec`` names, built from ``seed``: an FRL supermask network or dense.

    Parameters
    ----------
    spec : str
        ``"mlp"``, ``"cnn"`` or ``"package.module:factory"`` (see the module docstring).
    input_shape : tuple of int
        Shape of one example.
    num_classes : int
        Number of classes (logits per example).
    seed : int
        Defines the initial weights (the factory runs under a generator seeded
        with it) and, for FRL, the frozen signs and initial ranking.
    k : float
        Kept fraction of each layer's edges, in (0, 1] (checked for dense too).
    supermask : bool
        True: :func:`~fedrank.models.supermask.to_supermask` of the module (FRL).
        False: the module as built, every parameter trainable as the factory left it.

    Raises
    ------
    ConfigError
        Field ``k`` or ``model``, one line saying what was wrong.
    """
    check_k(k)
    shape = tuple(int(d) for d in input_shape)
    factory = resolve_factory(spec)
    module = _seeded_build(spec, factory, shape, num_classes, seed)
    _check_same(spec, module, _seeded_build(spec, factory, shape, num_classes, seed))
    if not supermask:
        if not any(p.requires_grad for p in module.parameters()):
            raise ConfigError("model", f"{spec} has no trainable parameter")
        return module
    if not wrappable_layers(module):
        kinds = "/".join(t.__name__ for t in WRAPPED_TYPES)
        raise ConfigError("model", f"{spec} has no layer FRL can wrap (none of type {kinds})")
    if type(module) in WRAPPED_TYPES:
        # A bare layer as the whole model: give its ranking layer a name ("0").
        module = nn.Sequential(module)
    net = to_supermask(module, k=k, seed=seed)
    check_output(net, spec=f"{spec} (FRL)", input_shape=shape, num_classes=num_classes)
    return net
