"""Healing: distil a layer-skip allocation back toward the full model."""
