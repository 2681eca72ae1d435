"""The scenario's data settings as the data layer takes them (both tasks use these)."""

from __future__ import annotations

from fedrank.config import Scenario
from fedrank.data.partitioners import PartitionSpec
from fedrank.data.source import DataSource


def data_source(scenario: Scenario) -> DataSource:
    """Where the run's examples come from (``dataset``, columns, split, subsets)."""
    data = scenario.data
    return DataSource(
        dataset=scenario.effective.dataset,
        image_column=data.image_column,
        text_column=data.text_column,
        label_column=data.label_column,
        test_fraction=data.test_fraction,
        train_records=data.train_records,
        test_records=data.test_records,
    )


def partition_spec(scenario: Scenario) -> PartitionSpec:
    """How the training split is divided among the clients (seeded by the run)."""
    data = scenario.data
    return PartitionSpec(
        scheme=data.partitioner,
        num_clients=scenario.run.num_clients,
        seed=scenario.run.seed,
        alpha=data.alpha,
        classes_per_client=data.classes_per_client,
        shards_per_client=data.shards_per_client,
    )
