"""The ClientApp's data-path: a site trains on its own file instead of its partition."""

from __future__ import annotations

import numpy as np
import pytest

from fedrank.client.site_data import site_examples
from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.task import client_data, initial_state, local_update

SCENARIO = Scenario(dataset="digits", num_clients=4, clients_per_round=2, lr=1.0, local_epochs=1)


def test_without_data_path_the_site_uses_its_partition():
    assert site_examples({"partition-id": 1}, SCENARIO) is None


def test_a_site_trains_on_its_own_file(tmp_path):
    own = client_data(SCENARIO, 3)
    subset = slice(0, 40)
    np.savez(tmp_path / "own.npz", images=own.images[subset], labels=own.labels[subset])
    data = site_examples({"partition-id": 0, "data-path": str(tmp_path / "own.npz")}, SCENARIO)
    state = initial_state(SCENARIO)

    _, on_file = local_update(SCENARIO, state, 1, 0, data=data)
    _, on_partition = local_update(SCENARIO, state, 1, 0)

    assert data is not None
    assert on_file.num_examples == 40
    assert on_partition.num_examples == len(client_data(SCENARIO, 0))


@pytest.mark.parametrize("value", [3, ""])
def test_data_path_must_be_a_path(value):
    with pytest.raises(ConfigError, match="data-path"):
        site_examples({"partition-id": 0, "data-path": value}, SCENARIO)


def test_a_file_of_the_wrong_dataset_shape_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", images=rng.random((4, 1, 28, 28)), labels=np.arange(4))

    with pytest.raises(ConfigError, match=r"\(N, 1, 8, 8\)"):
        site_examples({"data-path": str(tmp_path / "mnist.npz")}, SCENARIO)
