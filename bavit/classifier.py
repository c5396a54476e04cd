"""The BAViT token classifier: a few ViT layers and a per-token foreground logit.

It is a YOLOS with N layers and no detection tokens' heads: the same patch embedding
(conv stem included when the detector has one), position embeddings and `YolosLayer`
blocks, so it can start from the first N blocks of a trained detector."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import YolosConfig
from transformers.models.yolos.modeling_yolos import YolosLayer, YolosPatchEmbeddings

from bavit import checkpoint
from bavit.yolos import ConvStem, PrunedYolos, sincos_2d


class TokenClassifier(nn.Module):
    def __init__(self, config: YolosConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embeddings = YolosPatchEmbeddings(config)
        if getattr(config, "conv_stem", False):
            self.patch_embeddings.projection = ConvStem(config.num_channels, config.hidden_size, config.patch_size)
        n = self.patch_embeddings.num_patches
        gh, gw = self.grid
        self.position_embeddings = nn.Parameter(sincos_2d(gh, gw, config.hidden_size)[None].clone())
        self.layers = nn.ModuleList([YolosLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, 1)
        assert self.position_embeddings.shape[1] == n

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.config.image_size
        return h // self.config.patch_size, w // self.config.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Foreground logits, (B, N) in raster order of the patch grid."""
        x = self.patch_embeddings(pixel_values) + self.position_embeddings
        for layer in self.layers:
            x = layer(x)
        return self.head(self.layernorm(x)).squeeze(-1)

    @classmethod
    def from_detector(cls, detector: PrunedYolos, num_layers: int) -> "TokenClassifier":
        """Starts from the detector's patch embedding, patch position embeddings (as the
        detector interpolates them at its own input size) and first `num_layers` blocks; a
        BAViT deeper than the detector (BAViT-10 before a 4-layer tiny detector) copies all
        its blocks and starts the rest fresh."""
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        config = copy.deepcopy(detector.config)
        config.num_hidden_layers = num_layers
        model = cls(config)
        model.patch_embeddings.load_state_dict(detector.patch_embeddings.state_dict())
        emb = detector.embeddings
        with torch.no_grad():
            pos = emb.interpolation(emb.position_embeddings, tuple(config.image_size))
            model.position_embeddings.copy_(pos[:, 1:-config.num_detection_tokens])
        for mine, theirs in zip(model.layers, detector.det.vit.encoder.layer):
            mine.load_state_dict(theirs.state_dict())
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TokenClassifier":
        model = cls(checkpoint.load_config(path))
        model.load_state_dict(checkpoint.load_state(path), strict=True)
        return model.eval()

    def save_pretrained(self, path: str | Path) -> Path:
        return checkpoint.save(self, self.config, path)
