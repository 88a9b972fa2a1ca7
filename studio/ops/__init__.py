"""Latent operations, written once over the backend contract."""
