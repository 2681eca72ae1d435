"""Random sources: statistics of the draws, state round trips, secure vs reproducible."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

from fedrank.errors import CheckpointError, ConfigError
from fedrank.privacy.randomness import NOT_PRIVATE_NOTE, RandomSource, SourceState

N = 200_000


def test_gaussian_draws_have_the_asked_mean_and_std() -> None:
    # Arrange
    source = RandomSource.reproducible(7)

    # Act
    draws = source.normal(N, std=2.5, mean=1.0)

    # Assert: 5-sigma bounds of the sample mean and sample std (std of s ~ sigma/sqrt(2n)).
    assert abs(draws.mean() - 1.0) < 5 * 2.5 / math.sqrt(N)
    assert abs(draws.std() - 2.5) < 5 * 2.5 / math.sqrt(2 * N)
    # And the shape of the distribution, not only two moments (seeded: deterministic).
    assert stats.kstest((draws - 1.0) / 2.5, "norm").pvalue > 1e-3


def test_torch_gaussian_has_dtype_shape_and_std() -> None:
    draws = RandomSource.reproducible(8).normal_torch((400, 500), std=0.3)

    assert draws.dtype == torch.float32
    assert draws.shape == (400, 500)
    assert abs(float(draws.std()) - 0.3) < 5 * 0.3 / math.sqrt(2 * N)


def test_secure_gaussian_within_a_loose_bound() -> None:
    draws = RandomSource.secure().normal(N, std=1.0)

    # Not seeded: a bound that a correct source misses with probability ~1e-12.
    assert abs(draws.mean()) < 7 / math.sqrt(N)
    assert abs(draws.std() - 1.0) < 7 / math.sqrt(2 * N)


def test_uniforms_lie_in_the_unit_interval_and_are_uniform() -> None:
    u = RandomSource.reproducible(9).uniform((N,))

    assert u.min() >= 0.0
    assert u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_bernoulli_and_poisson_subset_rates() -> None:
    source = RandomSource.reproducible(10)

    flips = source.bernoulli(N, 0.2)
    chosen = source.poisson_subset(list(range(1000, 1000 + N)), 0.05)

    assert abs(flips.mean() - 0.2) < 5 * math.sqrt(0.2 * 0.8 / N)
    assert abs(len(chosen) / N - 0.05) < 5 * math.sqrt(0.05 * 0.95 / N)
    assert chosen == sorted(chosen)
    assert set(chosen) <= set(range(1000, 1000 + N))
    assert source.bernoulli(100, 0.0).sum() == 0
    assert source.bernoulli(100, 1.0).all()


def test_integers_are_unbiased_and_in_range() -> None:
    draws = RandomSource.reproducible(11).integers(7, 70_000)

    counts = np.bincount(draws, minlength=7)
    assert draws.min() >= 0
    assert draws.max() < 7
    assert stats.chisquare(counts).pvalue > 1e-3


def test_permutation_and_batches_cover_every_record_once() -> None:
    source = RandomSource.reproducible(12)

    perm = source.permutation(1000)
    batches = source.shuffled_batches(103, 10)
    dropped = source.shuffled_batches(103, 10, drop_last=True)

    assert sorted(perm.tolist()) == list(range(1000))
    assert not np.array_equal(perm, np.arange(1000))
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert [len(b) for b in dropped] == [10] * 10


def test_permutation_positions_are_uniform() -> None:
    source = RandomSource.reproducible(13)

    first = np.array([source.permutation(5)[0] for _ in range(5000)])

    assert stats.chisquare(np.bincount(first, minlength=5)).pvalue > 1e-3


def test_poisson_batches_include_each_record_at_rate_q() -> None:
    batches = RandomSource.reproducible(14).poisson_batches(1000, 0.1, 200)

    sizes = np.array([len(b) for b in batches])
    assert len(batches) == 200
    assert abs(sizes.mean() - 100) < 5 * math.sqrt(1000 * 0.1 * 0.9 / 200)
    assert all(np.all(np.diff(b) > 0) for b in batches)


def test_state_restore_continues_the_same_stream() -> None:
    # Arrange
    source = RandomSource.reproducible(15)
    source.normal(1001)
    saved = json.loads(json.dumps(source.state().to_dict()))

    # Act
    expected = source.normal(500)
    resumed = RandomSource.from_state(SourceState.from_dict(saved))

    # Assert
    np.testing.assert_array_equal(resumed.normal(500), expected)
    assert resumed.state() == source.state()


def test_secure_state_restore_continues_the_same_stream() -> None:
    source = RandomSource.secure()
    source.uniform(3)
    twin = RandomSource.from_state(source.state())

    np.testing.assert_array_equal(twin.uniform(64), source.uniform(64))


def test_reads_split_anywhere_give_the_same_bytes() -> None:
    whole = RandomSource.reproducible(16).random_bytes(1000)
    parts = RandomSource.reproducible(16)

    assert parts.random_bytes(1) + parts.random_bytes(63) + parts.random_bytes(936) == whole


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    a = RandomSource.reproducible(17).normal(100)
    b = RandomSource.reproducible(17).normal(100)
    c = RandomSource.reproducible(18).normal(100)

    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_two_secure_sources_differ() -> None:
    a, b = RandomSource.secure(), RandomSource.secure()

    assert a.state().key != b.state().key
    assert not np.allclose(a.normal(100), b.normal(100))


def test_kind_flag_and_privacy_note() -> None:
    assert RandomSource.secure().kind == "secure"
    assert not RandomSource.secure().is_reproducible
    assert RandomSource.secure().privacy_note is None
    assert RandomSource.reproducible(0).is_reproducible
    assert RandomSource.reproducible(0).privacy_note == NOT_PRIVATE_NOTE
    assert RandomSource.reproducible(0).derive("x").is_reproducible


def test_derived_streams_are_fixed_by_labels_and_leave_the_parent_alone() -> None:
    parent = RandomSource.reproducible(19)
    before = parent.state()

    a = parent.derive("round", 3, "noise").normal(50)
    again = parent.derive("round", 3, "noise").normal(50)
    other = parent.derive("round", 3, "noise", 1).normal(50)
    ambiguous = parent.derive("round", "3", "noise").normal(50)

    assert parent.state() == before
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, other)
    assert not np.allclose(a, ambiguous)
    assert not np.allclose(a, parent.normal(50))


def test_repr_never_shows_the_key() -> None:
    source = RandomSource.secure()
    key = source.state().key.hex()

    assert key not in repr(source)
    assert key not in repr(source.state())


def test_torch_generators_replay_only_from_the_same_state() -> None:
    source = RandomSource.reproducible(20)
    first = source.torch_generator()
    second = source.torch_generator()
    replay = RandomSource.reproducible(20).torch_generator()

    a = torch.randn(100, generator=first)
    assert torch.equal(a, torch.randn(100, generator=replay))
    assert not torch.equal(a, torch.randn(100, generator=second))
    secure = torch.randn(N, generator=RandomSource.secure().torch_generator())
    assert abs(float(secure.mean())) < 7 / math.sqrt(N)


def _dp_sgd(noise: RandomSource, batches: RandomSource) -> tuple[list[int], torch.Tensor]:
    """A few Opacus DP-SGD steps of a tiny model, its randomness from the two sources."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 256).reshape(64, 4)
    y = torch.arange(64) % 2
    loader = DataLoader(TensorDataset(x, y), batch_size=8, generator=batches.torch_generator())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Secure RNG turned off": this is the replacement
        engine = PrivacyEngine(accountant="rdp")
        module, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            noise_generator=noise.torch_generator(),
        )
    torch.manual_seed(123)  # the global generator must play no part
    sizes = []
    for xb, yb in dp_loader:
        sizes.append(len(yb))
        dp_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(xb), yb).backward()
        dp_optimizer.step()
    return sizes, model.weight.detach().clone()


def test_opacus_draws_its_noise_and_batches_from_the_given_generators() -> None:
    sizes, weights = _dp_sgd(RandomSource.reproducible(1), RandomSource.reproducible(2))
    same_sizes, same_weights = _dp_sgd(RandomSource.reproducible(1), RandomSource.reproducible(2))
    other_batches, _ = _dp_sgd(RandomSource.reproducible(1), RandomSource.reproducible(3))
    _, other_noise = _dp_sgd(RandomSource.reproducible(4), RandomSource.reproducible(2))

    assert (sizes, True) == (same_sizes, torch.equal(weights, same_weights))
    assert sizes != other_batches  # Poisson batches come from the DataLoader's generator
    assert not torch.equal(weights, other_noise)  # the noise from noise_generator


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: RandomSource.reproducible(-1), "seed"),
        (lambda: RandomSource.reproducible(1 << 256), "seed"),
        (lambda: RandomSource.reproducible(0).normal(3, std=-1.0), "std"),
        (lambda: RandomSource.reproducible(0).normal(3, std=math.nan), "std"),
        (lambda: RandomSource.reproducible(0).bernoulli(3, 1.5), "probability"),
        (lambda: RandomSource.reproducible(0).uniform((2, -1)), "shape"),
        (lambda: RandomSource.reproducible(0).integers(0, 3), "high"),
        (lambda: RandomSource.reproducible(0).derive(), "labels"),
        (lambda: SourceState(kind="secure", key=b"short"), "key"),
        (lambda: SourceState(kind="lucky", key=bytes(32)), "kind"),  # type: ignore[arg-type]
        (lambda: SourceState(kind="secure", key=bytes(32), position=-1), "position"),
    ],
)
def test_bad_arguments_name_the_field(make: object, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make()  # type: ignore[operator]

    assert caught.value.field == field


@pytest.mark.parametrize(
    "data",
    [{}, {"kind": "secure", "key": "zz", "position": 0}, {"kind": "secure", "key": "00"}],
)
def test_a_damaged_state_is_a_checkpoint_error(data: dict[str, object]) -> None:
    with pytest.raises(CheckpointError):
        SourceState.from_dict(data)
