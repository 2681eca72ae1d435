"""A plain Flower app that trains the user's own model with Federated Rank Learning.

The ServerApp and ClientApp are the user's; fedrank supplies the pieces:

- ``fedrank.models.supermask.to_supermask``: every Linear/Conv layer of the user's model
  becomes a supermask layer (frozen random weights from the seed, learned scores);
- ``fedrank.strategies.frl.FrlVote``: the FRL strategy (seeded client sampling, every
  reply validated, Borda vote), a Flower ``Strategy`` run by Flower's own ``start``;
- ``fedrank.protos.codecs.RankingCodec``: bit-packed rankings in both directions;
- ``fedrank.training.train_local``: local training of the scores.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from model import NUM_SITES, make_model, site_data, test_data

from fedrank.data.splits import ImageSplit
from fedrank.models.supermask import get_rankings, layer_sizes, set_rankings, to_supermask
from fedrank.protos.codecs import RankingCodec, Reply
from fedrank.protos.ranking_wire import RankingWire
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.strategies.frl import FrlVote
from fedrank.training import evaluate, train_local

SEED, K, ROUNDS = 7, 0.5, 5


def network() -> torch.nn.Module:
    """The same frozen random network in every process: the user's model, seeded."""
    torch.manual_seed(SEED)
    return to_supermask(make_model(), k=K, seed=SEED)


def codec(run_id: int) -> RankingCodec:
    """What every ranking message of this run looks like (a reply that differs is rejected)."""
    sizes = layer_sizes(network())
    return RankingCodec(
        RankingWire.for_model(run_id=run_id, layer_sizes=sizes, model="example-mlp", seed=SEED, k=K)
    )


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.monotonic() + 120
    while len(nodes := sorted(grid.get_node_ids())) < NUM_SITES:  # wait for every site
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(nodes)} of {NUM_SITES} sites connected in 120 s")
        time.sleep(0.5)
    strategy = FrlVote(
        partitions=dict(enumerate(nodes)),
        clients_per_round=3,
        codec=codec(grid.run.run_id),
        seed=SEED,
    )
    images, labels = test_data()

    def accuracy(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = network()
        set_rankings(model, from_array_record(arrays))
        loss, acc = evaluate(model, ImageSplit(images, labels))
        print(f"round {server_round}: accuracy {acc:.3f}")
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy.start(
        grid=grid,
        initial_arrays=to_array_record(get_rankings(network())),
        num_rounds=ROUNDS,
        evaluate_fn=accuracy,
    )


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
    wire = codec(msg.metadata.run_id)
    model = network()
    set_rankings(model, wire.decode_global(server_round, msg.content))
    images, labels = site_data(int(context.node_config["partition-id"]))
    generator = torch.Generator().manual_seed(SEED * 1000 + server_round)
    result = train_local(
        model, ImageSplit(images, labels), epochs=2, lr=1.0, momentum=0.9, batch_size=16,
        generator=generator,
    )  # fmt: skip
    reply = Reply(state=get_rankings(model), num_examples=result.num_examples)
    return Message(content=wire.encode_reply(server_round, reply), reply_to=msg)


if __name__ == "__main__":
    from flwr.simulation import run_simulation

    run_simulation(server_app=server, client_app=client, num_supernodes=4)
