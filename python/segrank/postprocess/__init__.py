"""Instance labels from probabilities (connected components, seeded watershed)."""
from .instances import instance_labels, remove_small

__all__ = ["instance_labels", "remove_small"]
