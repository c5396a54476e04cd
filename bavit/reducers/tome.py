"""`tome`: training-free Token Merging (Bolya et al., "Token Merging: Your ViT But Faster",
ICLR 2023): in every layer from `start` on, bipartite soft matching merges r patch tokens
into their most similar partner, and attention is proportional (each key's logit gains the
log of how many patches its token stands for).

What it changes on the user's detector (`PrunedYolos`), as ToMe's timm patch does to a
Block, nothing else:
- layers before `start` run as they are;
- each later layer runs in two halves (`bavit.reducers._blocks`: the same modules, eager
  attention with the log-size bias) and, between them, merges: patch tokens alternate into
  sets A and B, each A token's best match in B is found by cosine similarity of the
  attention keys (mean over heads), the r best-matched A tokens are averaged into their B
  partner weighted by size, the rest stay. [CLS] and the detection tokens never take part
  (they stay first and last, size 1);
- merged tokens keep no raster order (positions were added at the embedding).
Static shapes: the schedule r_i = min(r, n_i // 2) is fixed when the model is built.

keep -> r: the smallest r whose patch-token-layers (mean of the tokens each layer's
attention and MLP see) do not exceed those of pruning to K = round(keep * N) before the
encoder, so reducers compared at one keep cost the same; when even the largest r cannot get
there (keep well below 0.5 with few layers) the largest r is used and `ideal_speedup` says
what it reaches. `r` > 0 as an option overrides the mapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bavit.pipeline import Pipeline
from bavit.reducers._blocks import attend, check_in_encoder, encoder_unfit, feed_forward, gather
from bavit.tokens import LayerTokens
from bavit.yolos import PrunedYolos


def schedule(num_tokens: int, layers: int, start: int, r: int) -> list[int]:
    """Tokens merged in each layer (0-based list), r capped at half the patch tokens left."""
    out, n = [], num_tokens
    for i in range(layers):
        ri = min(r, n // 2) if i + 1 >= start else 0
        out.append(ri)
        n -= ri
    return out


def patch_token_layers(num_tokens: int, merges: list[int]) -> float:
    total, n = 0.0, num_tokens
    for ri in merges:
        total += n - ri / 2          # attention sees n, the MLP n - r_i
        n -= ri
    return total


def r_for_keep(num_tokens: int, k: int, layers: int, start: int) -> int:
    """The smallest r at or below the cost of pruning to k tokens before the encoder."""
    budget = layers * k
    for r in range(num_tokens // 2 + 1):
        if patch_token_layers(num_tokens, schedule(num_tokens, layers, start, r)) <= budget:
            return r
    return num_tokens // 2


def merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching on patch tokens. x (B, n, C), size (B, n), metric (B, n, d) ->
    (B, n - r, C), (B, n - r). Written with top-k, gathers and one-hot matmuls (no scatter,
    no sort), which every target exports; the set sizes are Python ints, so a traced graph
    holds them as constants (OpenVINO's shape inference refuses `n_a - r` computed from a
    dynamic-batch tensor's shape, whose lower bound it takes as 0)."""
    n = int(x.shape[1])
    n_a, n_b = (n + 1) // 2, n // 2
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = torch.matmul(a, b.transpose(1, 2))                                 # (B, n_a, n_b)
    if n_b == 1:   # a max over a 1-long axis does not lower to LiteRT ('mhlo.reduce'); it is that entry
        node_max, node_idx = scores[..., 0], torch.zeros_like(scores[..., 0], dtype=torch.long)
    else:
        node_max, node_idx = scores.max(dim=-1)                                 # (B, n_a)
    if r == n_a:   # a top-k over the whole axis lowers to STABLEHLO_SORT, which LiteRT lacks
        src = torch.arange(n_a, device=x.device).expand(x.shape[0], n_a)
    else:
        src = node_max.topk(r, dim=1).indices                                  # (B, r)
    dst = node_idx.gather(1, src)                                               # (B, r)
    onehot = (dst.unsqueeze(-1) == torch.arange(n_b, device=x.device)).to(x.dtype).transpose(1, 2)  # (B, n_b, r)
    xa, xb, sa, sb = x[:, ::2], x[:, 1::2], size[:, ::2], size[:, 1::2]
    src_s = sa.gather(1, src)
    b_sum = xb * sb.unsqueeze(-1) + torch.matmul(onehot, gather(xa * sa.unsqueeze(-1), src))
    b_size = sb + torch.matmul(onehot, src_s.unsqueeze(-1)).squeeze(-1)
    if r == n_a:   # every A token merges: no empty top-k for the runtimes to lower
        return b_sum / b_size.unsqueeze(-1), b_size
    chosen = (src.unsqueeze(-1) == torch.arange(n_a, device=x.device)).to(x.dtype).sum(1)   # (B, n_a)
    unmerged = (1.0 - chosen).topk(n_a - r, dim=1).indices                     # the n_a - r others
    return (torch.cat([gather(xa, unmerged), b_sum / b_size.unsqueeze(-1)], dim=1),
            torch.cat([sa.gather(1, unmerged), b_size], dim=1))


class TomePipeline(Pipeline):
    @dataclass(frozen=True)
    class Options:
        start: int = 1             # 1-based first layer that merges
        r: int = 0                 # tokens merged per layer; 0: derived from keep (see the module)

        def __post_init__(self) -> None:
            if self.start < 1 or self.r < 0:
                raise ValueError(f"start must be >= 1 and r >= 0, got start={self.start}, r={self.r}")

    name = "tome"

    @classmethod
    def unfit(cls, config) -> str | None:
        return encoder_unfit(config)

    def __init__(self, detector: PrunedYolos, keep: float = 1.0, options: Any = None) -> None:
        super().__init__(detector, keep, options)
        layers = detector.config.num_hidden_layers
        if self.options.start > layers:
            raise ValueError(f"start {self.options.start} > the detector's {layers} layers")
        self.r = 0 if not self.prunes else (self.options.r or r_for_keep(self.num_tokens, self.k, layers,
                                                                         self.options.start))
        self.merges = schedule(self.num_tokens, layers, self.options.start, self.r)
        if self.prunes:
            check_in_encoder(detector)

    @property
    def tokens_kept(self) -> int:
        return self.num_tokens - sum(self.merges)

    @property
    def mapping(self) -> str:
        if not self.prunes:
            return super().mapping
        how = "set by option" if self.options.r else f"matches pruning to {self.k} tokens"
        return (f"r={self.r} per layer from layer {self.options.start} ({how}); patch tokens per layer "
                + ",".join(str(self.num_tokens - sum(self.merges[:i + 1])) for i in range(len(self.merges))))

    def layer_tokens(self) -> list[LayerTokens]:
        extra = 1 + self.detector.config.num_detection_tokens
        out, n = [], self.num_tokens
        for i, ri in enumerate(self.merges):
            out.append(LayerTokens(f"detector.{i}", n + extra, n - ri + extra))
            n -= ri
        return out

    def reduced(self, pixel_values: torch.Tensor):
        det = self.detector
        d = det.config.num_detection_tokens
        x = det.embed(pixel_values)
        b = x.shape[0]
        size = None                                          # patch-token sizes once merging starts
        ones = x.new_ones(b, 1)
        for i, layer in enumerate(det.det.vit.encoder.layer):
            if i + 1 < self.options.start:
                x = layer(x)
                continue
            n = self.num_tokens - sum(self.merges[:i])       # static: the schedule is fixed
            size = x.new_ones(b, n) if size is None else size
            bias = torch.cat([ones, size, ones.expand(-1, d)], dim=1).log()
            x, _, keys = attend(layer, x, bias)
            if self.merges[i]:
                patches, size = merge(x[:, 1:1 + n], size, keys.mean(dim=1)[:, 1:1 + n], self.merges[i])
                x = torch.cat([x[:, :1], patches, x[:, -d:]], dim=1)
            x = feed_forward(layer, x)
        logits, boxes = det.detect(x)
        return logits, boxes, pixel_values.new_zeros(b, self.num_tokens)
