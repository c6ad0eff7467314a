"""Synthetic, non-IID customer-service conversations for exercising fedintent end to end."""

from data_synth.sites import SYNTHETIC_SITE_SIZE, write_run_sites, write_sites
from data_synth.taxonomy import LABELS

__all__ = ["LABELS", "SYNTHETIC_SITE_SIZE", "write_run_sites", "write_sites"]
