"""The deployable model: BAViT scores -> keep top-K -> pruned YOLOS, one static-shape module."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from bavit.classifier import TokenClassifier
from bavit.pruning import TokenSelector
from bavit.yolos import PrunedYolos


@dataclass(frozen=True)
class PruneConfig:
    keep: float = 1.0
    bg_share: float = 0.0
    dilate: int = 0
    threshold: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class Pipeline(nn.Module):
    """`forward(pixels) -> (logits, boxes, token_logits)`. token_logits are BAViT's
    per-patch foreground logits, returned so token accuracy is measured on the very model
    a backend runs. Without a classifier (dense baseline) they are zeros."""

    def __init__(self, detector: PrunedYolos, classifier: TokenClassifier | None, prune: PruneConfig) -> None:
        super().__init__()
        if classifier is None and prune.keep < 1.0:
            raise ValueError("keep < 1.0 needs a BAViT token classifier")
        if classifier is not None and classifier.grid != detector.grid:
            raise ValueError(f"BAViT grid {classifier.grid} != detector grid {detector.grid}")
        self.detector = detector
        self.classifier = classifier
        self.prune = prune
        self.selector = TokenSelector(detector.grid, prune.keep, prune.bg_share, prune.dilate, prune.threshold)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.detector.config.image_size)

    @property
    def tokens_kept(self) -> int:
        return self.selector.k

    def forward(self, pixel_values: torch.Tensor):
        if self.classifier is None:
            scores = pixel_values.new_zeros(pixel_values.shape[0], self.detector.num_patches)
            logits, boxes = self.detector(pixel_values)
            return logits, boxes, scores
        scores = self.classifier(pixel_values)
        keep_idx = None if self.selector.k == self.selector.num_tokens else self.selector(scores)
        logits, boxes = self.detector(pixel_values, keep_idx)
        return logits, boxes, scores


def load_pipeline(detector_dir: str | Path, classifier_dir: str | Path | None, prune: PruneConfig) -> Pipeline:
    detector = PrunedYolos.from_pretrained(detector_dir)
    classifier = TokenClassifier.from_pretrained(classifier_dir) if classifier_dir else None
    return Pipeline(detector, classifier, prune).eval()


def weights_key(pipeline: Pipeline) -> str:
    """Content hash of every weight: artifacts built from other weights never collide."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(pipeline.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()
