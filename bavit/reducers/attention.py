"""`attention`: training-free, EViT-style ("Not All Patches are What You Need", Liang et al.
2022). Inside layer `layer` (1-based), between its attention and its MLP, the patch tokens
are ranked by the attention that [CLS] and the detection tokens pay them (softmax
probabilities averaged over heads and over those queries) and the top K = round(keep * N)
are kept; with `fuse`, the dropped ones are merged into one token, their average weighted by
that attention (EViT's "fused token").

What it changes on the user's detector (`PrunedYolos`), nothing else:
- layers before `layer` run as they are, on every token;
- layer `layer` runs in two halves (`bavit.reducers._blocks`: the same modules, eager
  attention, whose probabilities are read), and the patch tokens are gathered (sorted, so
  raster order is kept) between them; [CLS] and the detection tokens are never dropped and
  stay first and last;
- the layers after it run as they are, on 1 + K (+1 fused) + D tokens.
Static shapes: K is fixed. No trained part, no token classifier (token_logits are zeros).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bavit.pipeline import Pipeline
from bavit.reducers._blocks import attend, check_in_encoder, encoder_unfit, feed_forward, gather
from bavit.tokens import LayerTokens
from bavit.yolos import PrunedYolos


def attention_scores(probs: torch.Tensor, num_patches: int, num_det: int) -> torch.Tensor:
    """(B, H, T, T) attention probabilities -> (B, N): the mean attention [CLS] (query 0) and
    the detection tokens (the last D queries) pay each patch token (keys 1..N)."""
    queries = torch.cat([probs[:, :, :1], probs[:, :, -num_det:]], dim=2)   # (B, H, 1+D, T)
    return queries[..., 1:1 + num_patches].mean(dim=(1, 2))


class AttentionPipeline(Pipeline):
    @dataclass(frozen=True)
    class Options:
        layer: int = 2        # 1-based layer inside which the patch tokens are pruned
        fuse: bool = False    # merge the dropped tokens into one (EViT's fused token)

        def __post_init__(self) -> None:
            if self.layer < 1:
                raise ValueError(f"layer must be >= 1, got {self.layer}")

    name = "attention"

    @classmethod
    def unfit(cls, config) -> str | None:
        return encoder_unfit(config)

    def __init__(self, detector: PrunedYolos, keep: float = 1.0, options: Any = None) -> None:
        super().__init__(detector, keep, options)
        if self.options.layer > detector.config.num_hidden_layers:
            raise ValueError(f"layer {self.options.layer} > the detector's {detector.config.num_hidden_layers} layers")
        if self.prunes:
            check_in_encoder(detector)

    @property
    def mapping(self) -> str:
        if not self.prunes:
            return super().mapping
        return (f"keeps {self.k} of {self.num_tokens} patch tokens inside layer {self.options.layer}"
                + (" + 1 fused" if self.options.fuse else ""))

    def layer_tokens(self) -> list[LayerTokens]:
        if not self.prunes:
            return super().layer_tokens()
        extra = 1 + self.detector.config.num_detection_tokens
        full, kept = self.num_tokens + extra, self.k + int(self.options.fuse) + extra
        out = []
        for i in range(self.detector.config.num_hidden_layers):
            before = i + 1 < self.options.layer
            at = i + 1 == self.options.layer
            out.append(LayerTokens(f"detector.{i}", full if before or at else kept, full if before else kept))
        return out

    def reduced(self, pixel_values: torch.Tensor):
        det = self.detector
        n, d = self.num_tokens, det.config.num_detection_tokens
        x = det.embed(pixel_values)
        layers = det.det.vit.encoder.layer
        at = self.options.layer - 1
        for layer in layers[:at]:
            x = layer(x)
        x, probs, _ = attend(layers[at], x)
        score = attention_scores(probs, n, d)                                # (B, N)
        idx = score.topk(self.k, dim=1).indices.sort(dim=1).values
        patches = x[:, 1:1 + n]
        parts = [x[:, :1], gather(patches, idx)]
        if self.options.fuse:
            kept = (idx.unsqueeze(-1) == torch.arange(n, device=idx.device)).to(score.dtype).sum(1)   # (B, N)
            weight = score * (1.0 - kept)
            total = weight.sum(1).clamp_min(1e-12)[:, None, None]
            fused = (weight.unsqueeze(-1) * patches).sum(1, keepdim=True) / total
            parts.append(fused)
        x = feed_forward(layers[at], torch.cat(parts + [x[:, -d:]], dim=1))
        for layer in layers[at + 1:]:
            x = layer(x)
        logits, boxes = det.detect(x)
        return logits, boxes, pixel_values.new_zeros(pixel_values.shape[0], n)
