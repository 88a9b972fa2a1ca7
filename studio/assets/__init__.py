"""Weights the core ships: the project's classifiers, one per dataset (MNIST, Fashion-MNIST; see studio.classifier)."""
