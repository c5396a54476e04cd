"""`random`: K = round(keep * N) patch tokens drawn uniformly at random, seeded. The floor any
learned method must beat: it costs nothing to choose and knows nothing about the image.

What it changes on the user's detector: before the encoder, the embedding gathers a fixed
set of K patch tokens (`PrunedYolos.embed(pixels, keep_idx)`), drawn once from `seed` when
the model is built and kept in raster order, the same for every image; [CLS] and the
detection tokens are untouched. A fixed draw is a constant of the exported graph (no random
op in any runtime), reproducible from the seed; over images it is as uninformed as a
fresh draw per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bavit.pipeline import Pipeline
from bavit.tokens import LayerTokens
from bavit.yolos import PrunedYolos


def draw(num_tokens: int, k: int, seed: int) -> torch.Tensor:
    """K sorted indices of [0, N), uniformly at random from `seed`."""
    perm = torch.randperm(num_tokens, generator=torch.Generator().manual_seed(seed))
    return perm[:k].sort().values


class RandomPipeline(Pipeline):
    @dataclass(frozen=True)
    class Options:
        seed: int = 0

    name = "random"

    def __init__(self, detector: PrunedYolos, keep: float = 1.0, options: Any = None) -> None:
        super().__init__(detector, keep, options)
        self.register_buffer("keep_idx", draw(self.num_tokens, self.k, self.options.seed), persistent=False)

    @property
    def mapping(self) -> str:
        if not self.prunes:
            return super().mapping
        return f"{self.k} of {self.num_tokens} patch tokens, one seeded draw (seed {self.options.seed})"

    def layer_tokens(self) -> list[LayerTokens]:
        return self.detector.layer_tokens(self.k)

    def reduced(self, pixel_values: torch.Tensor):
        idx = self.keep_idx.expand(pixel_values.shape[0], -1)
        logits, boxes = self.detector(pixel_values, idx)
        return logits, boxes, pixel_values.new_zeros(pixel_values.shape[0], self.num_tokens)
