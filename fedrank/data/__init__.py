"""Packaged datasets and partitioners."""
