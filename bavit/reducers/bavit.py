"""`bavit`: the paper's method. A separate light BAViT-N scores every patch token as
foreground or background; the detector runs on the top K = round(keep * N).

What it changes on the user's detector (`bavit.yolos.PrunedYolos`), nothing else:
- before the encoder: a `TokenClassifier` (BAViT-N, `layers` deep; weights `bavit{layers}/`
  beside the detector) computes one logit per patch from the image;
- `bavit.pruning.TokenSelector` turns logits into K sorted patch indices (threshold,
  `dilate` post-processing convolution, `bg_share` background slots);
- the detector's embedding gathers those K patch tokens and their position embeddings
  (`PrunedYolos.embed(pixels, keep_idx)`); [CLS] and the detection tokens are untouched.
token_logits are BAViT's logits: token accuracy is measured on the deployed model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bavit.classifier import TokenClassifier
from bavit.pipeline import Pipeline, WeightsSource
from bavit.pruning import TokenSelector
from bavit.tokens import LayerTokens
from bavit.yolos import PrunedYolos


class BavitPipeline(Pipeline):
    @dataclass(frozen=True)
    class Options:
        layers: int = 2            # BAViT depth: loads bavit{layers}/
        bg_share: float = 0.0      # share of the K slots given to background tokens (partial pruning)
        dilate: int = 0            # post-processing convolution kernel over the token mask (0: off)
        threshold: float = 0.0     # foreground logit threshold of the token mask

        def __post_init__(self) -> None:
            if self.layers < 1:
                raise ValueError(f"layers must be >= 1, got {self.layers}")
            if not 0.0 <= self.bg_share < 1.0:
                raise ValueError(f"bg_share must be in [0, 1), got {self.bg_share}")
            if self.dilate < 0 or (self.dilate > 1 and self.dilate % 2 == 0):
                raise ValueError(f"dilate must be 0 (off), 1 or an odd kernel size, got {self.dilate}")

    name = "bavit"
    scores_tokens = True
    needs_classifier = True

    def __init__(self, detector: PrunedYolos, classifier: TokenClassifier | None, keep: float = 1.0,
                 options: Any = None) -> None:
        super().__init__(detector, keep, options)
        o = self.options
        if classifier is None and self.prunes:
            raise ValueError("keep < 1.0 needs a BAViT token classifier")
        if classifier is not None and classifier.grid != detector.grid:
            raise ValueError(f"BAViT grid {classifier.grid} != detector grid {detector.grid}")
        self.classifier = classifier
        self.selector = TokenSelector(detector.grid, self.keep, o.bg_share, o.dilate, o.threshold)

    @classmethod
    def create(cls, detector: PrunedYolos, keep: float, options: Any, source: WeightsSource) -> "BavitPipeline":
        if keep >= 1.0:
            return cls(detector, None, keep, options)   # the dense detector: BAViT does not run
        if source.root is None:
            from bavit.classifier import DEFAULT_WIDTH

            classifier = TokenClassifier.for_detector(detector, options.layers, DEFAULT_WIDTH.get(source.scale))
            with torch.no_grad():  # an untrained head scores every token 0: rank them at random
                classifier.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(source.seed))
            return cls(detector, classifier.eval(), keep, options)
        classifier = TokenClassifier.from_pretrained(Path(source.root) / f"bavit{options.layers}")
        if classifier.grid != detector.grid:   # the detector was re-gridded (--image-size): BAViT follows
            classifier.resize_input(tuple(detector.config.image_size))
        return cls(detector, classifier, keep, options)

    @classmethod
    def missing_weights(cls, root: Path, keep: float, options: Any, detector: str = "detector") -> str | None:
        if keep < 1.0 and not (Path(root) / f"bavit{options.layers}" / "config.json").is_file():
            return f"no bavit{options.layers}/ token classifier in {root} (the bavit reducer's layers option picks it)"
        return None

    @property
    def mapping(self) -> str:
        o = self.options
        if not self.prunes:
            return super().mapping
        return (f"BAViT-{o.layers} keeps {self.k} of {self.num_tokens} patch tokens before the encoder"
                + (f" ({self.selector.k_bg} background slots)" if self.selector.k_bg else ""))

    def layer_tokens(self) -> list[LayerTokens]:
        if not self.prunes:
            return super().layer_tokens()
        weight = (self.classifier.config.hidden_size / self.detector.config.hidden_size) ** 2
        return ([LayerTokens(f"classifier.{i}", self.num_tokens, self.num_tokens, weight)
                 for i in range(self.classifier.config.num_hidden_layers)]
                + self.detector.layer_tokens(self.k))

    def reduced(self, pixel_values: torch.Tensor):
        scores = self.classifier(pixel_values)
        logits, boxes = self.detector(pixel_values, self.selector(scores))
        return logits, boxes, scores
