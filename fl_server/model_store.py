"""Saving and loading the trained global model.

A model folder holds ``model.safetensors`` (the exchanged parameters, no pickle) and
``config.json`` (model family, label list). It is written to a temporary folder and renamed
into place, so an interrupted save never leaves a half-written model behind.
"""

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models import get_model_family


def save_model(out_dir: Path, state_dict: dict[str, torch.Tensor], family: str,
               labels: list[str], metadata: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        config = {"model_family": family, "labels": labels, **metadata}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_model(model_dir: Path) -> tuple[torch.nn.Module, list[str], dict]:
    """(model ready for inference, labels, config) from a folder written by ``save_model``."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"not a fedintent model folder (no config.json): {model_dir}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    labels = config["labels"]
    model = get_model_family(config["model_family"]).build_model(len(labels))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    return model, labels, config
