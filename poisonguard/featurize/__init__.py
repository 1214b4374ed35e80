"""Featurize: a batch's columns as a finite numeric matrix, and richer representations (probe activations)."""
