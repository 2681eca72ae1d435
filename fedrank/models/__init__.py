"""Supermask models (FRL) and LoRA wrapping."""

import os

# Runs are offline: set before any submodule imports transformers or peft, so that
# neither ever reaches for a hub (a user's own setting wins).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
