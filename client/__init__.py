"""The Flower ClientApp and local trainers (fedrank.client)."""
