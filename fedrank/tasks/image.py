"""Image classification: FRL on a supermask network, or FedAvg-family on dense weights.

The server and every client rebuild the same network from (architecture, seed, k)
and the same partition from (dataset, partitioner, seed); only rankings (FRL) or
weights (FedAvg) cross the wire.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedrank.artifacts import top_k_mask, write_arrays
from fedrank.config import Scenario
from fedrank.data.federation import image_partition, partitions_for
from fedrank.data.site import load_site_data
from fedrank.data.source import load_image_data
from fedrank.data.splits import ImageData, ImageSplit
from fedrank.devices import describe_device, resolve_device
from fedrank.errors import ConfigError
from fedrank.models.factory import build_network
from fedrank.models.supermask import get_rankings, layer_sizes, set_rankings
from fedrank.protos import keys
from fedrank.protos.codecs import ArraysCodec, Codec, RankingCodec, Reply
from fedrank.protos.ranking_wire import RankingWire
from fedrank.tasks.base import State, proximal_mu, split_local
from fedrank.tasks.data import data_source, partition_spec
from fedrank.training import evaluate, load_numpy_state, numpy_state, train_local

log = logging.getLogger(__name__)

MASK_FILE = "mask.safetensors"


def training_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """Generator for one client's local training in one round (seed, round, partition)."""
    state = np.random.SeedSequence([seed, server_round, partition_id]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run this process's torch with ``count`` threads, then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ImageTask:
    """FRL (``update = ranking``) or FedAvg-family (``weights``) image classification.

    FRL: Mozaffari et al., arXiv 2110.04350. The network's weights are random and
    frozen; clients train scores and send rank vectors; the server votes.
    FedAvg: McMahan et al., arXiv 1602.05629, with Flower's aggregators.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.dense = scenario.spec.update == "weights"
        self.source = data_source(scenario)
        self.partitions = partition_spec(scenario)
        self._model: nn.Module | None = None

    @functools.cached_property
    def device(self) -> torch.device:
        """Where this process trains and evaluates (the scenario's ``device``, resolved)."""
        device = resolve_device(self.scenario.run.device)
        log.info("fedrank: %s runs on %s", self.scenario.run.strategy, describe_device(device))
        return device

    # -- data ----------------------------------------------------------------------

    @property
    def dataset(self) -> ImageData:
        """The scenario's dataset with its fixed held-out split."""
        return load_image_data(self.source, seed=self.scenario.run.seed)

    @property
    def num_classes(self) -> int:
        """Classes of the scenario's dataset."""
        return self.dataset.num_classes

    def partition_data(self, partition_id: int) -> ImageSplit:
        """The training examples of one partition, reproducible from the seed."""
        s = self.scenario
        if not 0 <= partition_id < s.run.num_clients:
            raise ConfigError(
                "partition-id",
                f"{partition_id} outside [0, {s.run.num_clients - 1}] (num-clients)",
            )
        return image_partition(self.source, self.partitions, partition_id)

    def site_data(self, path: str) -> ImageSplit:
        """A site's own examples at ``path`` (any format of the data layer), validated."""
        data = self.dataset
        return load_site_data(
            path,
            kind="image",
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            class_names=data.class_names,
            columns=self.source,
        )

    def split_local(self, data: ImageSplit, *, partition_id: int) -> tuple[ImageSplit, ImageSplit]:
        """(training, held-out) examples of a site: ``eval-fraction`` held out, seeded."""
        return split_local(data, self.scenario, partition_id)

    # -- model ---------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """A fresh copy of the network as the seed defines it."""
        data = self.dataset
        return build_network(
            self.scenario.effective.model,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            seed=self.scenario.run.seed,
            k=self.scenario.frl.k,
            supermask=not self.dense,
        )

    @property
    def model(self) -> nn.Module:
        """This process's working copy on its device, built once; every user overwrites its
        state first (rank vectors and weights are read and written from the CPU)."""
        if self._model is None:
            self._model = self.build_model().to(self.device)
        return self._model

    def load_state(self, model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
        """Put a global state into ``model``: dense weights or rank vectors."""
        if self.dense:
            load_numpy_state(model, dict(state))
        else:
            set_rankings(model, state)

    def read_state(self, model: nn.Module) -> State:
        """What a client sends back: dense weights or rank vectors."""
        return numpy_state(model) if self.dense else get_rankings(model)

    # -- both sides ----------------------------------------------------------------

    def check(self) -> None:
        """Load the data, build the model and every partition; refuse what cannot run."""
        s = self.scenario
        classes = self.num_classes
        attack = s.attack
        if attack.kind == "label_flip" and attack.flip_rule == "targeted":
            for key, value in (
                ("attack-source-class", attack.source_class),
                ("attack-target-class", attack.target_class),
            ):
                if value >= classes:
                    raise ConfigError(
                        key, f"{s.effective.dataset} has classes 0..{classes - 1}, got {value}"
                    )
        partitions_for(self.source, self.partitions, "image")  # refuses empty partitions
        _ = self.device  # `device = cuda` without a GPU is refused here, before anything runs
        self.initial_state()

    def initial_state(self) -> State:
        """Round 0: rank vectors of the seed's scores, or the seed's weights."""
        return self.read_state(self.build_model())

    def layer_sizes(self) -> dict[str, int]:
        """Edges per supermask layer (what a valid FRL reply must contain)."""
        return layer_sizes(self.model)

    def codec(self, run_id: object) -> Codec:
        """Bit-packed rankings (FRL) or arrays of the network's layout (FedAvg)."""
        if self.dense:
            return ArraysCodec.for_state(numpy_state(self.model))
        s = self.scenario
        return RankingCodec(
            RankingWire.for_model(
                run_id=run_id,
                layer_sizes=self.layer_sizes(),
                strategy=s.run.strategy,
                dataset=s.effective.dataset,
                model=s.effective.model,
                seed=s.run.seed,
                k=s.frl.k,
            ),
            reply_bits=s.frl.rank_bits,
        )

    # -- client side -----------------------------------------------------------------

    def train(
        self,
        state: State,
        data: ImageSplit,
        *,
        server_round: int,
        partition_id: int,
        message: RecordDict,
        node_state: RecordDict,
    ) -> Reply:
        """Load the global state, train on ``data``, read the reply."""
        s = self.scenario
        model = self.model
        self.load_state(model, state)
        result = train_local(
            model,
            data,
            epochs=s.train.local_epochs,
            lr=s.effective.lr,
            momentum=s.train.momentum,
            batch_size=s.train.batch_size,
            generator=training_generator(s.run.seed, server_round, partition_id),
            proximal_mu=proximal_mu(message),
        )
        return Reply(
            state=self.read_state(model),
            num_examples=result.num_examples,
            metrics={keys.TRAIN_LOSS: result.loss, keys.STEPS: result.steps},
        )

    # -- server side -----------------------------------------------------------------

    def evaluate(self, state: State) -> tuple[float, float]:
        """Loss and accuracy of the global model (masked by the global ranking)."""
        return self.evaluate_local(state, self.dataset.test)

    def evaluate_local(self, state: State, data: ImageSplit) -> tuple[float, float]:
        """Loss and accuracy of the global model on ``data`` (a site's held-out part)."""
        model = self.model
        self.load_state(model, state)
        return evaluate(model, data)

    def load_model(self, state: State) -> nn.Module:
        """A fresh network holding ``state`` (FRL: the seed's weights under the voted mask)."""
        model = self.build_model()
        self.load_state(model, state)
        return model.eval()

    def export(self, state: State, directory: Path, facts: Mapping[str, Any]) -> dict[str, Any]:
        """FRL: the top-k mask of the global ranking (``mask.safetensors``); with the seed,
        k and architecture it is the whole model. FedAvg: the weights are the state."""
        s = self.scenario
        if not self.dense:
            masks = {name: top_k_mask(ranks, s.frl.k) for name, ranks in state.items()}
            write_arrays(directory / MASK_FILE, masks)
        return {"architecture": s.effective.model, "seed": s.run.seed, "k": s.frl.k}
