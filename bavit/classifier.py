"""The BAViT token classifier: a few ViT layers and a per-token foreground logit.

It is a YOLOS with N layers and no detection tokens' heads: HF's patch embedding, position
embeddings and `YolosLayer` blocks. At the detector's width it shares the detector's
design (conv stem included) and can start from its first N blocks. At the `ti` scale it is
a light ViT of half the width with a plain patch projection: a 2-layer BAViT as wide as
the detector, with a conv stem like the detector's, was a quarter of the pruned
pipeline's time and held keep 0.5 to 1.08x (torch) / 1.29x (LiteRT) over dense at batch 1
(see `DEFAULT_WIDTH`)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import YolosConfig
from transformers.models.yolos.modeling_yolos import YolosLayer, YolosPatchEmbeddings

from bavit import checkpoint
from bavit.yolos import PrunedYolos, patch_projection, sincos_2d

# BAViT width per detector scale; None = the detector's own width.
DEFAULT_WIDTH: dict[str, int | None] = {"tiny": None, "ti": 96}


def bavit_config(detector: YolosConfig, num_layers: int, width: int | None = None) -> YolosConfig:
    """BAViT-N for `detector`'s input and patch grid. A narrower BAViT gets a 4x MLP, the
    detector's head count and a plain patch projection (a stem as costly as the detector's
    would be paid twice per image)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    config = copy.deepcopy(detector)
    config.num_hidden_layers = num_layers
    if width is not None and width != detector.hidden_size:
        if width % detector.num_attention_heads:
            raise ValueError(f"BAViT width {width} is not a multiple of {detector.num_attention_heads} heads")
        config.hidden_size, config.intermediate_size, config.conv_stem = width, 4 * width, False
    return config


def light_bavit_config(image_size: tuple[int, int], patch: int, num_layers: int, width: int) -> YolosConfig:
    """A standalone BAViT-N: plain patch projection, 32-wide heads, 4x MLP."""
    if num_layers < 1 or width % 32:
        raise ValueError(f"BAViT needs >= 1 layer and a width that is a multiple of 32, got {num_layers}, {width}")
    return YolosConfig(hidden_size=width, num_hidden_layers=num_layers, num_attention_heads=width // 32,
                       intermediate_size=4 * width, image_size=list(image_size), patch_size=patch,
                       num_detection_tokens=1, use_mid_position_embeddings=False, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, conv_stem=False)


class TokenClassifier(nn.Module):
    def __init__(self, config: YolosConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embeddings = YolosPatchEmbeddings(config)
        if (stem := patch_projection(config)) is not None:
            self.patch_embeddings.projection = stem
        n = self.patch_embeddings.num_patches
        gh, gw = self.grid
        self.position_embeddings = nn.Parameter(sincos_2d(gh, gw, config.hidden_size)[None].clone())
        self.layers = nn.ModuleList([YolosLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, 1)
        assert self.position_embeddings.shape[1] == n
        for m in self.modules():  # HF's ViT init (the default Linear init trains worse)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=config.initializer_range)
                nn.init.zeros_(m.bias)

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
    def for_detector(cls, detector: PrunedYolos, num_layers: int, width: int | None = None) -> "TokenClassifier":
        """A fresh BAViT-N for `detector`: at its width, started from its first blocks. A DETR
        shares no ViT blocks to start from: its BAViT is a fresh light ViT on the same 16x16
        grid, half the DETR's width (32 to 96) unless given."""
        if getattr(detector, "family", "yolos") == "detr":
            width = width or max(32, min(96, detector.config.d_model // 64 * 32))
            return cls(light_bavit_config(tuple(detector.config.image_size), detector.patch_size, num_layers, width))
        if width in (None, detector.config.hidden_size):
            return cls.from_detector(detector, num_layers)
        return cls(bavit_config(detector.config, num_layers, width))

    @classmethod
    def from_detector(cls, detector: PrunedYolos, num_layers: int) -> "TokenClassifier":
        """Starts from the detector's patch embedding, patch position embeddings (as the
        detector interpolates them at its own input size) and first `num_layers` blocks; a
        BAViT deeper than the detector (BAViT-10 before a 4-layer tiny detector) copies all
        its blocks and starts the rest fresh."""
        model = cls(bavit_config(detector.config, num_layers))
        model.patch_embeddings.load_state_dict(detector.patch_embeddings.state_dict())
        emb = detector.embeddings
        with torch.no_grad():
            pos = emb.interpolation(emb.position_embeddings, tuple(model.config.image_size))
            model.position_embeddings.copy_(pos[:, 1:-model.config.num_detection_tokens])
        for mine, theirs in zip(model.layers, detector.det.vit.encoder.layer):
            mine.load_state_dict(theirs.state_dict())
        return model

    def resize_input(self, size: tuple[int, int]) -> None:
        """Re-grids BAViT for H x W inputs (a detector run at another `--image-size`): its
        position embeddings are interpolated bicubically over the patch grid, as YOLOS
        interpolates the detector's, so both keep seeing the same grid."""
        h, w = (int(size[0]), int(size[1]))
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        (gh, gw), (nh, nw) = self.grid, (h // p, w // p)
        dim = self.position_embeddings.shape[-1]
        with torch.no_grad():
            grid = self.position_embeddings.reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
            grid = nn.functional.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)
            pos = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, dim)
        self.config.image_size = [h, w]
        self.position_embeddings = nn.Parameter(pos.contiguous())
        self.patch_embeddings.image_size = (h, w)
        self.patch_embeddings.num_patches = nh * nw

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TokenClassifier":
        model = cls(checkpoint.load_config(path))
        model.load_state_dict(checkpoint.load_state(path), strict=True)
        return model.eval()

    def save_pretrained(self, path: str | Path) -> Path:
        return checkpoint.save(self, self.config, path)
