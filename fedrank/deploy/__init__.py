"""Deployment helpers: certificates and keys for Flower's SuperLink and SuperNodes."""
