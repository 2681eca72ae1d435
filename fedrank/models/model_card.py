"""The model card (README.md) of an exported adapter, and the code that loads it.

The facts about the run (data, federation, accuracy, privacy) come from the caller
as a :class:`ModelCard`; the facts about the model (base, pooling, adapter, tokenizer)
from the export itself (:class:`ModelFacts`). :func:`loading_snippet` is the one
loading call the card documents, and the tests run it as written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fedrank.errors import ConfigError

SNIPPET_FOLDER = "path/to/this/folder"
"""What the loading snippet calls the folder (a user puts their path there)."""


@dataclass(frozen=True)
class DpGuarantee:
    """The differential-privacy guarantee of the released adapter for one privacy unit.

    Parameters
    ----------
    unit : {"record", "client"}
        ``"record"``: sample-level DP-SGD on each client (DP-LoRA, arXiv 2312.17493);
        ``"client"``: clipping and noise per client update at the server.
    epsilon : float
        Epsilon spent by the released adapter (the largest over parties for
        ``"record"``), at ``delta``.
    delta : float
    clip_norm : float
        The L2 clip of each record's gradient or each client's update.
    noise_multiplier : float or None
        Noise standard deviation over ``clip_norm`` (the smallest over parties if
        they differ); None when no Gaussian noise was added (RQM: each client's
        update was randomly quantized instead).
    accountant : str
        Which accountant computed epsilon (``"rdp"``, ``"prv"``).
    """

    unit: Literal["record", "client"]
    epsilon: float
    delta: float
    clip_norm: float
    noise_multiplier: float | None
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.unit not in ("record", "client"):
            raise ConfigError("unit", f"must be 'record' or 'client', got {self.unit!r}")
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ConfigError("epsilon", f"must be finite and non-negative, got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError("delta", f"must lie in (0, 1), got {self.delta}")
        if not self.clip_norm > 0:
            raise ConfigError("clip_norm", f"must be positive, got {self.clip_norm}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(
                "noise_multiplier", f"must be positive or None, got {self.noise_multiplier}"
            )


@dataclass(frozen=True)
class ModelCard:
    """What the run knows about an exported adapter, for its model card.

    Parameters
    ----------
    data : str
        The training data in words (name, origin, how many records), e.g.
        ``"rotten-tomatoes review snippets (packaged), 10,246 training records"``.
    rounds : int
        Federated rounds whose result is exported.
    clients : int
        Clients (sites, partitions) in the federation.
    clients_per_round : int
        Clients sampled each round.
    aggregation : str
        How updates were combined (``"fedit"``, ``"ffa"``, a robust rule...).
    accuracy : float or None
        Held-out accuracy of the exported adapter, in [0, 1]; None if not evaluated.
    test_records : int
        Held-out records ``accuracy`` was measured on (0 with ``accuracy=None``).
    label_names : tuple of str
        Name of each class by index (empty: unnamed).
    privacy : tuple of DpGuarantee
        One per privacy unit under DP; empty without DP.
    notes : str
        Anything else the reader must know (e.g. the run stopped early, and why).
    """

    data: str
    rounds: int
    clients: int
    clients_per_round: int
    aggregation: str = "fedit"
    accuracy: float | None = None
    test_records: int = 0
    label_names: tuple[str, ...] = ()
    privacy: tuple[DpGuarantee, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.data.strip():
            raise ConfigError("data", "must describe the training data, got an empty string")
        if self.rounds < 0:
            raise ConfigError("rounds", f"must be non-negative, got {self.rounds}")
        if self.clients < 1:
            raise ConfigError("clients", f"must be positive, got {self.clients}")
        if not 1 <= self.clients_per_round <= self.clients:
            raise ConfigError(
                "clients_per_round",
                f"must lie in [1, {self.clients}] (clients), got {self.clients_per_round}",
            )
        if self.accuracy is not None and not 0.0 <= self.accuracy <= 1.0:
            raise ConfigError("accuracy", f"must lie in [0, 1] or be None, got {self.accuracy}")
        if (self.accuracy is None) != (self.test_records == 0) or self.test_records < 0:
            raise ConfigError(
                "test_records",
                f"must be positive with an accuracy and 0 without, got {self.test_records}",
            )
        units = [g.unit for g in self.privacy]
        if len(set(units)) != len(units):
            raise ConfigError("privacy", f"at most one guarantee per unit, got {units}")


@dataclass(frozen=True)
class ModelFacts:
    """What the export itself knows: the model and how to load it."""

    base: str
    revision: str | None
    model_type: str
    pooling: Literal["cls", "mean"]
    num_labels: int
    r: int
    lora_alpha: int
    target_modules: tuple[str, ...] | str
    default_targets: bool
    mode: Literal["lora", "ffa"]
    head: tuple[str, ...]
    max_length: int
    pad_token_id: int | None
    replaces_saved_head: bool
    plain_loadable: bool = True
    """False for fedrank's random test base (``tiny-bert``), which exists nowhere else."""


def loading_snippet(facts: ModelFacts) -> str:
    """The Python that loads the export and classifies a text: transformers + peft only.

    ``cls``: the adapter sits on the architecture's own head, so PEFT's standard
    loader builds the right model (``num_labels`` sizes the head; ``pad_token_id``
    lets a GPT-2-style head find each row's last token; ``ignore_mismatched_sizes``
    where the base checkpoint has a head of another size, which the adapter's
    replaces; float32 as evaluated).
    ``mean``: no transformers class pools that way; the folder's own modeling code
    does, hence ``trust_remote_code=True``.
    """
    if facts.pooling == "mean":
        imports = "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        load = (
            "# The head reads the mean of the token states, which no transformers class does:\n"
            "# this folder's modeling_fedrank.py builds the model (hence trust_remote_code).\n"
            "model = AutoModelForSequenceClassification.from_pretrained(\n"
            "    folder, trust_remote_code=True\n"
            ")\n"
        )
    else:
        imports = (
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer\n"
        )
        pad = "" if facts.pad_token_id is None else f", pad_token_id={facts.pad_token_id}"
        resize = ", ignore_mismatched_sizes=True" if facts.replaces_saved_head else ""
        load = (
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f"    folder, num_labels={facts.num_labels}{pad}{resize}, dtype=torch.float32\n"
            ").eval()\n"
        )
    return (
        "import torch\n"
        f"{imports}\n"
        f'folder = "{SNIPPET_FOLDER}"\n'
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        f"{load}"
        'batch = tokenizer(["a gripping, beautifully acted film"], truncation=True,\n'
        '                  padding=True, return_tensors="pt")\n'
        "with torch.no_grad():\n"
        "    predicted = model(**batch).logits.argmax(dim=-1)\n"
    )


def _hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name))


def _table(rows: Sequence[tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _model_section(facts: ModelFacts, card: ModelCard) -> str:
    base = f"`{facts.base}`" + (f" (revision `{facts.revision}`)" if facts.revision else "")
    pooling = (
        "mean: the head reads the attention-masked mean of the last hidden states"
        if facts.pooling == "mean"
        else f"the architecture's own classification head ({facts.model_type})"
    )
    targets = (
        f"`{facts.target_modules}`"
        if isinstance(facts.target_modules, str)
        else ", ".join(f"`{t}`" for t in facts.target_modules)
    )
    targets += " (PEFT's default for this architecture)" if facts.default_targets else ""
    mode = "FFA-LoRA (A frozen at its seeded value, B trained)" if facts.mode == "ffa" else "LoRA"
    labels = (
        ", ".join(f"{i} = {name}" for i, name in enumerate(card.label_names))
        if card.label_names
        else "unnamed"
    )
    return "## Model\n\n" + _table(
        [
            ("base", base),
            ("pooling", pooling),
            ("adapter", f"{mode}, rank {facts.r}, alpha {facts.lora_alpha}, on {targets}"),
            ("head", f"{', '.join(f'`{h}`' for h in facts.head)}, trained with the adapter"),
            ("classes", f"{facts.num_labels} ({labels})"),
            ("tokenizer", f"the base's, in this folder; at most {facts.max_length} tokens"),
        ]
    )


def _privacy_section(card: ModelCard) -> str:
    if not card.privacy:
        return "## Privacy\n\nTrained without differential privacy.\n"
    rows = "".join(
        f"| {g.unit} | {g.epsilon:.4g} | {g.delta:.3g} | {g.clip_norm:.4g} | "
        f"{'RQM' if g.noise_multiplier is None else f'{g.noise_multiplier:.4g}'} | "
        f"{g.accountant} |\n"
        for g in card.privacy
    )
    return (
        "## Privacy\n\n(epsilon, delta)-differential privacy of the released adapter:\n\n"
        "| unit | epsilon | delta | clip norm | noise multiplier | accountant |\n"
        "|---|---|---|---|---|---|\n" + rows
    )


def render_card(facts: ModelFacts, card: ModelCard) -> str:
    """The README.md of an export (Hugging Face model-card front matter + sections)."""
    tags = ["lora", "fedrank", "federated-learning"]
    tags += ["differential-privacy"] if card.privacy else []
    front = ["---", f"library_name: {'transformers' if facts.pooling == 'mean' else 'peft'}"]
    front += [f"base_model: {facts.base}"] if _hub_id(facts.base) else []
    front += ["pipeline_tag: text-classification", "tags:"] + [f"- {t}" for t in tags] + ["---"]
    accuracy = (
        f"{card.accuracy:.4f} on {card.test_records:,} held-out records"
        if card.accuracy is not None
        else "not evaluated"
    )
    trap = (
        "\nDo not put these adapter files on the base's own classification head "
        "(`PeftModel.from_pretrained(AutoModelForSequenceClassification...)`): that head "
        "reads another vector; the files are named so that PEFT's loaders do not find them.\n"
        if facts.pooling == "mean"
        else ""
    )
    return (
        "\n".join(front)
        + f"\n\n# LoRA classifier on {facts.base}, trained with fedrank\n\n"
        + "A LoRA adapter and a classification head trained by federated learning "
        + f"(fedrank) on {card.data}.\n\n"
        + _model_section(facts, card)
        + "\n## Training\n\n"
        + _table(
            [
                ("data", card.data),
                (
                    "federation",
                    f"{card.clients} clients, {card.clients_per_round} per round, "
                    f"{card.rounds} rounds",
                ),
                ("aggregation", card.aggregation),
            ]
        )
        + f"\n## Evaluation\n\nAccuracy: {accuracy}.\n\n"
        + _privacy_section(card)
        + (f"\n## Notes\n\n{card.notes}\n" if card.notes else "")
        + "\n## How to load\n\n"
        + (
            "With `transformers` and `peft` only:\n\n"
            if facts.plain_loadable
            else f"`{facts.base}` is fedrank's random test base, saved nowhere: only "
            "`fedrank.models.export.load_exported_adapter` rebuilds this model. With a "
            "real base, `transformers` and `peft` alone load it so:\n\n"
        )
        + "```python\n"
        + loading_snippet(facts)
        + "```\n"
        + trap
    )
