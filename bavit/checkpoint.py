"""One on-disk format for every model of the project: a Hugging Face config.json beside a
model.safetensors, so stock HF YOLOS folders and our own checkpoints load the same way and
nothing is ever fetched from a hub."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import YolosConfig

WEIGHTS_NAME = "model.safetensors"


def load_config(path: str | Path) -> YolosConfig:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in weights folder: {path}")
    return YolosConfig.from_pretrained(str(path), local_files_only=True)


# HF checkpoints name the mid-layer position embeddings as the module did before it moved
# into `interpolation`; transformers renames them on load (conversion_mapping.py, "yolos")
# and back on save, so stock YOLOS-S/B folders carry the old key.
_RENAMES = {"vit.encoder.mid_position_embeddings": "vit.encoder.interpolation.mid_position_embeddings"}


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads model.safetensors, or the legacy pytorch_model.bin older HF exports carry."""
    path = Path(path)
    if (path / WEIGHTS_NAME).is_file():
        state = load_file(str(path / WEIGHTS_NAME))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or pytorch_model.bin in weights folder: {path}")
    return {_RENAMES.get(k, k): v for k, v in state.items()}


def save(module: torch.nn.Module, config: YolosConfig, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME))
    return path
