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
    a backend runs. At keep 1.0 the pipeline is the dense detector alone, the baseline
    every speed-up is measured against: BAViT does not run and token_logits are zeros."""

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
    def prunes(self) -> bool:
        return self.selector.k < self.selector.num_tokens

    @property
    def tokens_kept(self) -> int:
        return self.selector.k

    def forward(self, pixel_values: torch.Tensor):
        if self.classifier is None or not self.prunes:
            scores = pixel_values.new_zeros(pixel_values.shape[0], self.detector.num_patches)
            logits, boxes = self.detector(pixel_values)
            return logits, boxes, scores
        scores = self.classifier(pixel_values)
        logits, boxes = self.detector(pixel_values, self.selector(scores))
        return logits, boxes, scores


def load_pipeline(detector_dir: str | Path, classifier_dir: str | Path | None, prune: PruneConfig,
                  image_size: int | None = None) -> Pipeline:
    detector = PrunedYolos.from_pretrained(detector_dir, image_size)
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


DEFAULT_WEIGHTS_ROOT = Path(__file__).resolve().parents[1] / "weights"


def resolve_weights(spec: str | None, bavit_layers: int = 2, detector: str = "detector"
                    ) -> tuple[str, Path | None, Path | None]:
    """-> (label, detector dir, classifier dir); dirs are None for a random model.

    `spec` is a folder holding `detector/` (or the `detector` variant named, e.g.
    `detector-sparse-keep0.5`) and `bavit{N}/` (our layout), or `random:tiny` /
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
        from bavit.yolos import CONFIGS
        if scale not in CONFIGS:
            raise ValueError(f"--weights {spec}: unknown scale '{scale}' (choose from {', '.join(CONFIGS)})")
        return spec, None, None
    root = Path(spec)
    det_dir = root / detector
    if not (det_dir / "config.json").is_file():
        raise FileNotFoundError(f"--weights {root}: no {detector}/config.json in this folder")
    classifier = root / f"bavit{bavit_layers}"
    return str(root), det_dir, classifier if (classifier / "config.json").is_file() else None


def build_pipeline(spec: str | None, prune: PruneConfig, bavit_layers: int = 2, seed: int = 0,
                   detector: str = "detector", image_size: int | None = None) -> Pipeline:
    """The pipeline a benchmark cell runs, from `resolve_weights` spec."""
    label, det_dir, cls_dir = resolve_weights(spec, bavit_layers, detector)
    if det_dir is None:
        from bavit.classifier import DEFAULT_WIDTH
        from bavit.yolos import CONFIGS, init_embeddings

        scale = label.split(":", 1)[1]
        torch.manual_seed(seed)
        detector = PrunedYolos(CONFIGS[scale]()).eval()
        init_embeddings(detector, seed=seed)
        classifier = TokenClassifier.for_detector(detector, bavit_layers, DEFAULT_WIDTH[scale])
        with torch.no_grad():  # untrained head would score every token 0: rank them at random
            classifier.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
        return Pipeline(detector, classifier.eval(), prune).eval()
    if cls_dir is None and prune.keep < 1.0:
        raise FileNotFoundError(f"--weights {label}: no bavit{bavit_layers}/ classifier for keep {prune.keep:g}")
    return load_pipeline(det_dir, cls_dir, prune, image_size)
