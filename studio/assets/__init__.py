"""Weights the core ships: the project's MNIST classifier (see studio.classifier)."""
