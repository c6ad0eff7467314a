"""Synthetic, non-IID customer-service conversations for exercising fedintent end to end."""

from data_synth.sites import write_sites
from data_synth.taxonomy import LABELS

__all__ = ["LABELS", "write_sites"]
