"""Flower strategies: FRL vote, LoRA aggregation, DP wrappers (fedrank.strategies)."""
