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
from bavit.tokens import LayerTokens
from bavit.yolos import PrunedYolos


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
    def unfit(cls, config: Any) -> str | None:
        """Why this method cannot run on a detector of `config` (its family, its embeddings),
        or None: asked of every reducer and detector before any work."""
        return None

    @classmethod
    def missing_weights(cls, root: Path, keep: float, options: Any, detector: str = "detector") -> str | None:
        """Why `root` cannot serve this method at `keep` on its `detector` folder (checked
        before any work), or None."""
        return None

    # -- what the model is ------------------------------------------------------------------
    @property
    def reduction(self) -> dict[str, Any]:
        """What changes the computed function besides the weights (part of the cache key):
        the method and every option (bavit.reducers.ReducerSpec.as_dict), and the keep ratio."""
        return {"reducer": {"name": self.name, **dict(sorted(asdict(self.options).items()))}, "keep": self.keep}

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
