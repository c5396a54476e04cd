"""One on-disk format for every model of the project: a Hugging Face config.json beside a
model.safetensors, so stock HF YOLOS folders and our own checkpoints load the same way and
nothing is ever fetched from a hub."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PretrainedConfig, YolosConfig

WEIGHTS_NAME = "model.safetensors"


def load_config(path: str | Path) -> PretrainedConfig:
    """The folder's config as its own class (YOLOS, DETR; a BAViT classifier is a YOLOS config)."""
    import json

    from transformers import DetrConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in weights folder: {path}")
    try:
        kind = json.loads((path / "config.json").read_text()).get("model_type", "yolos")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path / 'config.json'}: not a JSON config ({err})") from None
    cls = {"yolos": YolosConfig, "detr": DetrConfig}.get(kind)
    if cls is None:
        raise ValueError(f"{path / 'config.json'}: model_type '{kind}' is not supported (yolos, detr)")
    return cls.from_pretrained(str(path), local_files_only=True)


# HF checkpoints name the mid-layer position embeddings as the module did before it moved
# into `interpolation`; transformers renames them on load (conversion_mapping.py, "yolos")
# and back on save, so stock YOLOS-S/B folders carry the old key.
RENAMES = {"vit.encoder.mid_position_embeddings": "vit.encoder.interpolation.mid_position_embeddings"}


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads model.safetensors, or the legacy pytorch_model.bin older HF exports carry."""
    path = Path(path)
    if (path / WEIGHTS_NAME).is_file():
        state = load_file(str(path / WEIGHTS_NAME))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or pytorch_model.bin in weights folder: {path}")
    return {RENAMES.get(k, k): v for k, v in state.items()}


def save(module: torch.nn.Module, config: PretrainedConfig, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME))
    return path


def half(src: str | Path, dst: str | Path) -> Path:
    """Copy of a weights folder with float tensors stored as float16: the committed `ti`
    detectors (5.7M parameters) take 11 MB instead of 23. Models load them into float32
    (`load_state_dict` converts), so only the stored values are rounded."""
    src, dst = Path(src), Path(dst)
    state = load_state(src)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "CARD.md"):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(dst / WEIGHTS_NAME))
    return dst


if __name__ == "__main__":  # python -m bavit.checkpoint half SRC DST
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "half":
        sys.exit("usage: python -m bavit.checkpoint half SRC_FOLDER DST_FOLDER")
    try:
        print(half(sys.argv[2], sys.argv[3]) / WEIGHTS_NAME)
    except FileNotFoundError as err:
        sys.exit(f"bavit.checkpoint: error: {err}")
