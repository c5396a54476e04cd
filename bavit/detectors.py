"""Detector weights: where a `--weights` spec points, which family a config is (YOLOS, DETR),
and the detector loaded from it, trained or random."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bavit.pipeline import WeightsSource
from bavit.yolos import PrunedYolos

DEFAULT_WEIGHTS_ROOT = Path(__file__).resolve().parents[1] / "weights"


def resolve_weights(spec: str | None, detector: str = "detector") -> tuple[str, Path | None]:
    """-> (label, detector dir); the dir is None for a random model.

    `spec` is a folder holding `detector/` (or the `detector` variant named, e.g.
    `detector-sparse-keep0.5`) and the reducers' own parts (`bavit{N}/`), or `random:tiny` /
    `random:ti` for an untrained model of that scale (speed figures only). None means the
    project's demo weights: `weights/ti`, else `weights/tiny`, else random tiny."""
    if spec is None:
        for scale in ("ti", "tiny"):
            root = DEFAULT_WEIGHTS_ROOT / scale
            if (root / detector / "config.json").is_file():
                spec = str(root)
                break
        else:
            spec = "random:tiny"
    if spec.startswith("random:"):
        scale = spec.split(":", 1)[1]
        if scale not in random_scales():
            raise ValueError(f"--weights {spec}: unknown scale '{scale}' (choose from {', '.join(random_scales())})")
        return spec, None
    det_dir = Path(spec) / detector
    if not (det_dir / "config.json").is_file():
        raise FileNotFoundError(f"--weights {spec}: no {detector}/config.json in this folder")
    return str(Path(spec)), det_dir


def random_scales() -> dict[str, Any]:
    """`random:SCALE` -> the config of that untrained detector: YOLOS `tiny` / `ti`, DETR
    `detr-tiny` / `detr` (bavit.detr)."""
    from bavit.detr import detr_config, tiny_detr_config
    from bavit.yolos import CONFIGS
    return {**CONFIGS, "detr-tiny": tiny_detr_config, "detr": detr_config}


def patch_of(config: Any) -> int:
    """Pixels per token side: YOLOS's patch, DETR's feature stride."""
    from bavit.detr import STRIDE
    return STRIDE if getattr(config, "model_type", None) == "detr" else config.patch_size


def detector_class(config: Any) -> type:
    """The detector family of a config: its HF model_type (yolos, detr)."""
    from bavit.detr import PrunedDetr
    families = {"yolos": PrunedYolos, "detr": PrunedDetr}
    kind = getattr(config, "model_type", None)
    if kind not in families:
        raise ValueError(f"detector model_type '{kind}' is not supported (choose from {', '.join(families)})")
    return families[kind]


def load_detector(spec: str | None, detector: str = "detector", image_size: int | tuple[int, int] | None = None,
                  seed: int = 0) -> tuple[nn.Module, WeightsSource]:
    """The detector (`PrunedYolos` or `PrunedDetr`, by the config's model_type) of `spec`."""
    label, det_dir = resolve_weights(spec, detector)
    if det_dir is None:
        from bavit.yolos import init_embeddings

        scale = label.split(":", 1)[1]
        config = random_scales()[scale]()
        torch.manual_seed(seed)
        model = detector_class(config)(config).eval()
        if model.family == "yolos":
            init_embeddings(model, seed=seed)
        return model, WeightsSource(None, seed, scale)
    from bavit import checkpoint
    cls = detector_class(checkpoint.load_config(det_dir))
    return cls.from_pretrained(det_dir, image_size), WeightsSource(Path(label), seed)


def check_weights(det_dir: Path) -> None:
    """Raises ValueError naming the file and the first tensor that its config.json does not
    make (missing, unexpected, or of another shape): otherwise a mismatch surfaces only as
    every cell failing in its build process with a state_dict error naming neither. Reads
    the safetensors header, not the tensors."""
    from safetensors import safe_open

    from bavit import checkpoint

    file = det_dir / checkpoint.WEIGHTS_NAME
    if not file.is_file():   # a legacy pytorch_model.bin: checked when it loads
        return
    config = checkpoint.load_config(det_dir)
    try:
        with torch.device("meta"):
            model = detector_class(config)(config)
    except RuntimeError:   # a family that computes buffers at init (DETR's sine positions): on the CPU
        model = detector_class(config)(config)
    want = {k: tuple(v.shape) for k, v in model.det.state_dict().items()}
    try:
        with safe_open(str(file), "pt") as f:
            have = {checkpoint.RENAMES.get(k, k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{file}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    for key, shape in have.items():
        if key not in want:
            raise ValueError(f"{file}: tensor {key} is not part of the model its config.json describes")
        if shape != want[key]:
            raise ValueError(f"{file}: tensor {key} has shape {list(shape)}, its config.json makes "
                             f"{list(want[key])}")
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"{file}: no tensor {missing[0]} (and {len(missing) - 1} more), which its config.json's "
                         "model needs")
