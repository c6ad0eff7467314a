"""Intent model families: what a site computes from text, and what is trained and exchanged."""

from models.family import ModelFamily, get_model_family, model_family_names

__all__ = ["ModelFamily", "get_model_family", "model_family_names"]
