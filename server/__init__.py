"""The Flower ServerApp, evaluation, checkpoints and results (fedrank.server)."""
