"""What one transformer layer processes, in tokens: the unit every reducer, detector and the
work counter (bavit.flops) speak in. No dependencies, so the detectors and the reducers share it."""
from __future__ import annotations

from dataclasses import dataclass


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
