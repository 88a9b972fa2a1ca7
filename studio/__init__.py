"""Latent Studio: one latent interface over pluggable generative backends."""

__version__ = "0.1.0"
