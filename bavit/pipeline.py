"""The deployable model: a detector and the token reducer in front of (or inside) it, one
static-shape module. `Pipeline` itself is the dense detector (reducer `none`); each method in
`bavit/reducers/` subclasses it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bavit.pruning import keep_count
from bavit.yolos import PrunedYolos


@dataclass(frozen=True)
class LayerTokens:
    """Tokens one transformer layer processes: attention and MLP can differ (ToMe and EViT
    reduce between them); `weight` is its width squared over the detector's, so a narrow
    BAViT layer counts for what its linear layers cost."""
    where: str
    attention: int
    mlp: int
    weight: float = 1.0

    @property
    def cost(self) -> float:
        return self.weight * (self.attention + self.mlp) / 2


class Pipeline(nn.Module):
    """`forward(pixels) -> (logits, boxes, token_logits)`: the dense detector, reducer `none`,
    the baseline every speed-up is measured against. token_logits are a method's per-patch
    foreground logits (BAViT's), returned so token accuracy is measured on the very model a
    backend runs; methods without a foreground classifier return zeros and say so
    (`scores_tokens`). At keep 1.0 every subclass runs this dense forward, bit for bit."""

    @dataclass(frozen=True)
    class Options:
        pass

    name = "none"
    scores_tokens = False          # token_logits are foreground logits (token accuracy applies)
    needs_classifier = False       # loads a trained token classifier from the weights folder

    def __init__(self, detector: PrunedYolos, keep: float = 1.0, options: Any = None) -> None:
        super().__init__()
        self.detector = detector
        self.keep = float(keep)
        self.options = options if options is not None else self.Options()
        self.num_tokens = detector.num_patches
        self.k = keep_count(self.keep, self.num_tokens)
        if self.name == "none" and self.k < self.num_tokens:
            raise ValueError("reducer none is the dense detector: keep must be 1.0")

    @classmethod
    def create(cls, detector: PrunedYolos, keep: float, options: Any, source: WeightsSource) -> "Pipeline":
        """The pipeline on `detector`; methods with trained parts load them from `source`."""
        return cls(detector, keep, options)

    @classmethod
    def missing_weights(cls, root: Path, keep: float, options: Any, detector: str = "detector") -> str | None:
        """Why `root` cannot serve this method at `keep` on its `detector` folder (checked
        before any work), or None."""
        return None

    # -- what the model is ------------------------------------------------------------------
    @property
    def spec(self):
        from bavit.reducers import ReducerSpec
        return ReducerSpec(self.name, tuple(sorted(asdict(self.options).items())))

    @property
    def reduction(self) -> dict[str, Any]:
        """What changes the computed function besides the weights (part of the cache key)."""
        return {"reducer": self.spec.as_dict(), "keep": self.keep}

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.detector.config.image_size)

    @property
    def prunes(self) -> bool:
        return self.k < self.num_tokens

    @property
    def tokens_kept(self) -> int:
        """Patch tokens the detector's last layer sees."""
        return self.k

    def layer_tokens(self) -> list[LayerTokens]:
        """Tokens per layer, every network in the pipeline (a separate classifier included)."""
        return self.detector.layer_tokens(self.num_tokens)

    @property
    def mapping(self) -> str:
        """How keep became this method's token budget, for the row."""
        return f"all {self.num_tokens} patch tokens" if not self.prunes else ""

    @property
    def ideal_speedup(self) -> float:
        """Dense token-layers over this pipeline's (patch embedding and heads not counted)."""
        dense = Pipeline.layer_tokens(self)
        return sum(t.cost for t in dense) / sum(t.cost for t in self.layer_tokens())

    # -- forward ------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor):
        if not self.prunes:
            logits, boxes = self.detector(pixel_values)
            return logits, boxes, pixel_values.new_zeros(pixel_values.shape[0], self.num_tokens)
        return self.reduced(pixel_values)

    def reduced(self, pixel_values: torch.Tensor):
        raise NotImplementedError


@dataclass(frozen=True)
class WeightsSource:
    """Where a reducer finds trained parts of its own (a token classifier): the weights folder,
    or None for random weights made from `seed` (speed figures only)."""
    root: Path | None
    seed: int = 0
    scale: str | None = None       # random weights: the CONFIGS scale


def weights_key(pipeline: Pipeline) -> str:
    """Content hash of every weight: artifacts built from other weights never collide."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(pipeline.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


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


def build_pipeline(weights: str | None, reducer: Any = None, keep: float = 1.0, seed: int = 0,
                   detector: str = "detector", image_size: int | tuple[int, int] | None = None) -> Pipeline:
    """The pipeline a benchmark cell runs: the detector of `weights` (see `resolve_weights`)
    reduced by `reducer` (a bavit.reducers.ReducerSpec; None: dense) to `keep`."""
    from bavit.reducers import dense, reducer_class

    reducer = reducer or dense()
    model, source = load_detector(weights, detector, image_size, seed)
    return reducer_class(reducer.name).create(model, keep, reducer.typed_options(), source).eval()
