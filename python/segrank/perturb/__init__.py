"""Seeded perturbations: input-space transforms and channel dropout masks."""
