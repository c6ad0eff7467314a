"""Saving and loading the trained global model.

The final model is saved as a Hugging Face folder with a model card (``models/export.py``,
docs/EXPORT.md): it runs with ``transformers.pipeline`` or ``fedintent predict``, and
fedintent can rebuild the exchanged module from it for evaluation on site features.
"""

from pathlib import Path

import torch

from models import get_model_family
from models.export import export_model, load_exchanged
from models.model_card import model_card


def save_model(out_dir: Path, state_dict: dict[str, torch.Tensor], family: str,
               labels: list[str], run_doc: dict) -> Path:
    """Export the final model with its card, written from the run record ``run_doc``
    (``metrics.json``'s content with its ``final`` summary)."""
    model_family = get_model_family(family)
    card = model_card(run_doc, model_family, labels)
    rounds = run_doc.get("rounds", [])
    metadata = {"run_id": run_doc.get("run_id"), "rounds": len(rounds),
                "rounds_trained": sum(1 for r in rounds if r.get("sites_trained"))}
    return export_model(out_dir, model_family, state_dict, labels, card, metadata)


def load_model(model_dir: Path) -> tuple[torch.nn.Module, list[str], dict]:
    """(exchanged module ready for inference on features, labels, fedintent.json) of a folder
    written by ``save_model``."""
    return load_exchanged(model_dir)
