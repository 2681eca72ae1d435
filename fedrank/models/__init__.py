"""Supermask models (FRL) and LoRA wrapping."""
