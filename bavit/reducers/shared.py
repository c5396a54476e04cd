"""`bavit-shared`: the BAViT classifier head on the detector's own first `layers` layers, as
DynamicViT and SViT score tokens with the backbone's features instead of a second network.

What it changes on the user's detector (`PrunedYolos`), nothing else:
- the embedding and the first `layers` layers run as they are, on every token;
- a `SharedHead` (LayerNorm + one linear logit per token; weights `bavit-shared{layers}/`
  beside the detector) scores the patch tokens of that hidden state;
- `bavit.pruning.TokenSelector` picks K = round(keep * N) of them (threshold, `dilate`,
  `bg_share`, as `bavit`), they are gathered (sorted: raster order kept) with [CLS] first and
  the detection tokens last, and the remaining layers run on 1 + K + D tokens.
No second stem and no second set of layers: the price is that the first `layers` layers see
every token. The head is trained with the classifier trainer on the frozen trunk
(`python -m bavit.train classifier --shared DETECTOR ...`), and refuses to load onto a
detector other than the one it was trained on (the trunk's weight hash is in its config).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bavit.pipeline import Pipeline, WeightsSource
from bavit.pruning import TokenSelector
from bavit.reducers._blocks import check_in_encoder, encoder_unfit, gather
from bavit.reducers.bavit import BavitPipeline
from bavit.tokens import LayerTokens
from bavit.yolos import PrunedYolos

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def trunk_hash(detector: PrunedYolos, layers: int) -> str:
    """Content hash of what the head reads: the embedding and the first `layers` layers."""
    h = hashlib.sha256()
    parts = [("embeddings", detector.embeddings)] + [(f"layer{i}", m) for i, m in
                                                     enumerate(detector.det.vit.encoder.layer[:layers])]
    for prefix, module in parts:
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}".encode())
            h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_trunk(detector: PrunedYolos, pixel_values: torch.Tensor, layers: int) -> torch.Tensor:
    """Hidden state after the first `layers` layers, every token: (B, 1 + N + D, C)."""
    x = detector.embed(pixel_values)
    for layer in detector.det.vit.encoder.layer[:layers]:
        x = layer(x)
    return x


class SharedHead(nn.Module):
    """Per-patch foreground logits from the detector's hidden state after `layers` layers."""

    def __init__(self, hidden_size: int, layers: int, num_patches: int, trunk: str = "",
                 eps: float = 1e-12) -> None:
        super().__init__()
        self.layers, self.num_patches, self.trunk = layers, num_patches, trunk
        self.layernorm = nn.LayerNorm(hidden_size, eps=eps)
        self.head = nn.Linear(hidden_size, 1)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.layernorm(hidden[:, 1:1 + self.num_patches])).squeeze(-1)

    @classmethod
    def for_detector(cls, detector: PrunedYolos, layers: int) -> "SharedHead":
        check_in_encoder(detector)     # a DETR, or mid-position embeddings: one line, before anything
        cfg = detector.config
        if not 1 <= layers < cfg.num_hidden_layers:
            raise ValueError(f"layers must be in [1, {cfg.num_hidden_layers - 1}], got {layers}")
        return cls(cfg.hidden_size, layers, detector.num_patches, trunk_hash(detector, layers), cfg.layer_norm_eps)

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG).write_text(json.dumps({"kind": "bavit-shared-head", "layers": self.layers,
                                               "hidden_size": self.head.in_features,
                                               "num_patches": self.num_patches, "trunk_sha256": self.trunk,
                                               "layer_norm_eps": self.layernorm.eps}, indent=1))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, detector: PrunedYolos) -> "SharedHead":
        check_in_encoder(detector)
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise FileNotFoundError(f"no {CONFIG} in shared-head folder: {path}")
        cfg = json.loads((path / CONFIG).read_text())
        head = cls(cfg["hidden_size"], cfg["layers"], cfg["num_patches"], cfg["trunk_sha256"], cfg["layer_norm_eps"])
        if trunk_hash(detector, head.layers) != head.trunk:
            raise ValueError(f"{path}: this head was trained on another detector's first {head.layers} layers")
        head.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
        return head.eval()


class SharedTrunkClassifier(nn.Module):
    """What the classifier trainer trains for `--shared`: the frozen trunk, then the head.
    Only the head has gradients; only the head is saved."""

    def __init__(self, detector: PrunedYolos, layers: int) -> None:
        super().__init__()
        self.detector = detector.eval()
        for p in self.detector.parameters():
            p.requires_grad_(False)
        self.head = SharedHead.for_detector(detector, layers)
        self.config = detector.config

    def train(self, mode: bool = True) -> "SharedTrunkClassifier":
        super().train(mode)
        self.detector.eval()          # the trunk stays in inference mode (it is frozen)
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            hidden = run_trunk(self.detector, pixel_values, self.head.layers)
        return self.head(hidden)

    def save_pretrained(self, path: str | Path) -> Path:
        return self.head.save_pretrained(path)


class SharedPipeline(Pipeline):
    @dataclass(frozen=True)
    class Options(BavitPipeline.Options):
        """bavit's selection options; `layers` counts the detector's own layers before the head
        (loads bavit-shared{layers}/)."""

    name = "bavit-shared"

    @classmethod
    def unfit(cls, config) -> str | None:
        return encoder_unfit(config)
    scores_tokens = True
    needs_classifier = True

    def __init__(self, detector: PrunedYolos, classifier: SharedHead | None, keep: float = 1.0,
                 options: Any = None) -> None:
        super().__init__(detector, keep, options)
        o = self.options
        if self.prunes:
            if classifier is None:
                raise ValueError("keep < 1.0 needs a trained shared head")
            if classifier.layers != o.layers:
                raise ValueError(f"the shared head reads layer {classifier.layers}, the options say {o.layers}")
            check_in_encoder(detector)
        self.classifier = classifier
        self.selector = TokenSelector(detector.grid, self.keep, o.bg_share, o.dilate, o.threshold)

    @classmethod
    def create(cls, detector: PrunedYolos, keep: float, options: Any, source: WeightsSource) -> "SharedPipeline":
        if keep >= 1.0:
            return cls(detector, None, keep, options)
        if source.root is None:
            head = SharedHead.for_detector(detector, options.layers)
            with torch.no_grad():  # untrained: rank tokens at random, as the random BAViT does
                head.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(source.seed))
            return cls(detector, head.eval(), keep, options)
        return cls(detector, SharedHead.from_pretrained(Path(source.root) / f"bavit-shared{options.layers}", detector),
                   keep, options)

    @classmethod
    def missing_weights(cls, root: Path, keep: float, options: Any, detector: str = "detector") -> str | None:
        """The head reads the detector's own first layers: one trained on another detector's
        (a fine-tuned one's trunk differs) does not fit."""
        head = Path(root) / f"bavit-shared{options.layers}"
        if keep >= 1.0:
            return None
        if not (head / CONFIG).is_file():
            return (f"no bavit-shared{options.layers}/ head in {root} (train one: python -m bavit.train classifier "
                    f"--shared {root}/{detector} --layers {options.layers} ...)")
        from bavit.checkpoint import load_config
        from bavit.detectors import detector_class

        det = detector_class(load_config(Path(root) / detector)).from_pretrained(Path(root) / detector)
        if getattr(det, "family", "yolos") == "yolos" and trunk_hash(det, options.layers) != json.loads(
                (head / CONFIG).read_text())["trunk_sha256"]:
            return (f"{head} was trained on another detector's first {options.layers} layers, not {detector}'s "
                    f"(train one: python -m bavit.train classifier --shared {root}/{detector} ...)")
        return None

    @property
    def mapping(self) -> str:
        if not self.prunes:
            return super().mapping
        return (f"head on detector layer {self.options.layers} keeps {self.k} of {self.num_tokens} patch tokens"
                + (f" ({self.selector.k_bg} background slots)" if self.selector.k_bg else ""))

    def layer_tokens(self) -> list[LayerTokens]:
        if not self.prunes:
            return super().layer_tokens()
        extra = 1 + self.detector.config.num_detection_tokens
        return [LayerTokens(f"detector.{i}", (self.num_tokens if i < self.options.layers else self.k) + extra,
                            (self.num_tokens if i < self.options.layers else self.k) + extra)
                for i in range(self.detector.config.num_hidden_layers)]

    def reduced(self, pixel_values: torch.Tensor):
        det = self.detector
        n, d, layers = self.num_tokens, det.config.num_detection_tokens, self.options.layers
        x = run_trunk(det, pixel_values, layers)
        scores = self.classifier(x)
        idx = self.selector(scores)
        x = torch.cat([x[:, :1], gather(x[:, 1:1 + n], idx), x[:, -d:]], dim=1)
        for layer in det.det.vit.encoder.layer[layers:]:
            x = layer(x)
        logits, boxes = det.detect(x)
        return logits, boxes, scores
