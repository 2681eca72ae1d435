"""A site's own examples instead of a packaged partition (``data-path`` node config).

A SuperNode started with ``--node-config 'partition-id=N data-path="/data/site.npz"'``
trains on that file (see :mod:`fedrank.data.local` for its format); ``partition-id``
still names the site for the server's seeded sampling and the training seed.
Without ``data-path`` the site trains on partition N of the scenario's dataset.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedrank.config import Scenario
from fedrank.data.digits import ImageSplit, load_dataset
from fedrank.data.local import FIELD, load_local_examples
from fedrank.errors import ConfigError

DATA_PATH_KEY = FIELD


def site_examples(node_config: Mapping[str, object], scenario: Scenario) -> ImageSplit | None:
    """The examples at the node's ``data-path``, validated; None when it has none."""
    if DATA_PATH_KEY not in node_config:
        return None
    path = node_config[DATA_PATH_KEY]
    if not isinstance(path, str) or not path:
        raise ConfigError(DATA_PATH_KEY, f"must be a file path in quotes, got {path!r}")
    dataset = load_dataset(scenario.dataset, test_fraction=scenario.test_fraction)
    return load_local_examples(
        path, image_shape=dataset.image_shape, num_classes=dataset.num_classes
    )
