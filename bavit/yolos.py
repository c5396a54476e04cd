"""YOLOS that runs on a subset of its patch tokens.

Built from Hugging Face `YolosForObjectDetection` modules (patch embedding, interpolated
position and mid-position embeddings, encoder layers, heads) so that stock HF weights load
unchanged and, with every token kept, the output equals stock YOLOS. Pruning is one gather:
kept patch tokens and their position embeddings are taken with the same sorted indices,
[CLS] first and the detection tokens last, exactly where YOLOS expects them.

Two inference-visible options help training from scratch on CPU (see
../shared/notes/training-facts.md) and are off for stock weights:
- `conv_stem`: stride-2 3x3 convolutions replace the single patch projection (`stem_width`
  channels in the first, doubling after; 32 unless the config says otherwise);
- `anchored_boxes`: each detection token predicts its box relative to a fixed reference box.

`box_frame` says what a predicted box is a fraction of, which decoding must know:
- `"image"`: of the resized image without its padding. DETR's convention: targets are
  normalised before padding and post-processing scales by the image size. A stock HF folder
  (no `box_frame` in its config) is read this way.
- `"input"`: of the whole (letterboxed, padded) model input. This project's trainer
  normalises targets so, and writes `box_frame: input` into every detector it saves; a
  detector it saved before that key existed is recognised by the options only it uses
  (`conv_stem` or `anchored_boxes` on).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import YolosConfig, YolosForObjectDetection

from bavit import checkpoint


def tiny_config(**overrides) -> YolosConfig:
    """~1M parameters, 64x64 input, 8x8 patches: 64 patch tokens, 16 detection tokens."""
    cfg = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
               image_size=[64, 64], patch_size=8, num_detection_tokens=16, num_labels=4,
               use_mid_position_embeddings=False, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, conv_stem=True, anchored_boxes=True, box_frame="input")
    cfg.update(overrides)
    return YolosConfig(**cfg)


def ti_config(**overrides) -> YolosConfig:
    """YOLOS-Ti shape (hidden 192, 12 layers, 3 heads) at 256x256 with 16x16 patches:
    256 patch tokens against 64 detection tokens, so pruning acts on the dominant cost.
    The conv stem starts at 16 channels: at 32 its full-resolution first stage cost 12% of
    the dense detector on CPU (eager), a fixed cost no pruning can remove."""
    cfg = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
               image_size=[256, 256], patch_size=16, num_detection_tokens=64, num_labels=4,
               use_mid_position_embeddings=False, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, conv_stem=True, stem_width=16, anchored_boxes=True,
               box_frame="input")
    cfg.update(overrides)
    return YolosConfig(**cfg)


CONFIGS = {"tiny": tiny_config, "ti": ti_config}
BOX_FRAMES = ("image", "input")


def box_frame(config) -> str:
    """What the config's predicted boxes are fractions of (module docstring)."""
    ours = getattr(config, "conv_stem", False) or getattr(config, "anchored_boxes", False)
    frame = getattr(config, "box_frame", "input" if ours else "image")
    if frame not in BOX_FRAMES:
        raise ValueError(f"detector config: box_frame must be one of {', '.join(BOX_FRAMES)}, got {frame!r}")
    return frame


def patch_projection(config: YolosConfig) -> nn.Module | None:
    """The conv stem the config asks for, or None to keep HF's single patch projection."""
    if not getattr(config, "conv_stem", False):
        return None
    return ConvStem(config.num_channels, config.hidden_size, config.patch_size, getattr(config, "stem_width", 32))


class ConvStem(nn.Module):
    """'Early convolutions': log2(patch) stride-2 3x3 conv+BN+ReLU, then a 1x1 to the width.
    Same output grid as the patch projection it replaces."""

    def __init__(self, channels: int, hidden: int, patch: int, width: int = 32) -> None:
        super().__init__()
        steps = int(math.log2(patch))
        if 2**steps != patch:
            raise ValueError(f"conv_stem needs a power-of-two patch size, got {patch}")
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(steps):
            c_out = min(width * 2**i, hidden)
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, hidden, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def anchor_boxes(num_tokens: int, size: float = 0.3) -> torch.Tensor:
    """Reference boxes (cx, cy, w, h) on the smallest square grid holding every token."""
    g = math.ceil(math.sqrt(num_tokens))
    idx = torch.arange(num_tokens)
    cx = (idx % g + 0.5) / g
    cy = (idx // g + 0.5) / g
    wh = torch.full((num_tokens,), size)
    return torch.stack([cx, cy, wh, wh], dim=-1)


class TokenGrid:
    """The token grid of a detector on its static `config.image_size`, one token per
    `patch_size` pixels (YOLOS's patch, DETR's feature stride)."""

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.config.image_size
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw


class PrunedYolos(TokenGrid, nn.Module):
    """YOLOS detector; `forward(pixels, keep_idx)` runs only the patch tokens in keep_idx."""

    family = "yolos"

    def __init__(self, config: YolosConfig) -> None:
        super().__init__()
        self.config = config
        self.det = YolosForObjectDetection(config)
        if (stem := patch_projection(config)) is not None:
            self.patch_embeddings.projection = stem
        ref = anchor_boxes(config.num_detection_tokens).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("box_bias", torch.logit(ref) if getattr(config, "anchored_boxes", False)
                             else torch.zeros_like(ref), persistent=False)

    # -- the HF modules, by role -------------------------------------------------------------
    @property
    def embeddings(self):
        return self.det.vit.embeddings

    @property
    def patch_embeddings(self):
        return self.det.vit.embeddings.patch_embeddings

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def layer_tokens(self, k: int) -> list:
        """Token-layers at k patch tokens: every layer sees [CLS], the k and the detection tokens."""
        from bavit.tokens import LayerTokens

        n = k + 1 + self.config.num_detection_tokens
        return [LayerTokens(f"detector.{i}", n, n) for i in range(self.config.num_hidden_layers)]

    # -- forward ------------------------------------------------------------------------------
    def embed(self, pixel_values: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's input: [CLS], the patch tokens in keep_idx (all when None) and the
        detection tokens, each with its position embedding: (B, 1 + K + D, C)."""
        emb = self.embeddings
        b, _, h, w = pixel_values.shape
        patches = self.patch_embeddings(pixel_values)                        # (B, N, C)
        pos = emb.interpolation(emb.position_embeddings, (h, w))              # (1, 1+N+D, C)
        d = self.config.num_detection_tokens
        patches = patches + pos[:, 1:-d]
        if keep_idx is not None:
            patches = _gather(patches, keep_idx)
        return torch.cat([emb.cls_token.expand(b, -1, -1) + pos[:, :1], patches,
                          emb.detection_tokens.expand(b, -1, -1) + pos[:, -d:]], dim=1)

    def forward_features(self, pixel_values: torch.Tensor, keep_idx: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Hidden states after every encoder layer (training uses the intermediate ones)."""
        b, _, h, w = pixel_values.shape
        d = self.config.num_detection_tokens
        x = self.embed(pixel_values, keep_idx)
        encoder = self.det.vit.encoder
        mid = encoder.interpolation((h, w)) if self.config.use_mid_position_embeddings else None
        if mid is not None and keep_idx is not None:                          # (L-1, 1, 1+N+D, C)
            depth = mid.shape[0]
            mid_patches = mid[:, 0, 1:-d].unsqueeze(1).expand(depth, b, -1, -1)
            mid_patches = torch.stack([_gather(m, keep_idx) for m in mid_patches.unbind(0)])
            mid = torch.cat([mid[:, :, :1].expand(-1, b, -1, -1), mid_patches,
                             mid[:, :, -d:].expand(-1, b, -1, -1)], dim=2)
        hidden = []
        for i, layer in enumerate(encoder.layer):
            x = layer(x)
            if mid is not None and i < len(encoder.layer) - 1:
                x = x + mid[i]
            hidden.append(x)
        return hidden

    def heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and (cx, cy, w, h) boxes in [0, 1] from final-normed detection tokens."""
        boxes = (self.det.bbox_predictor(tokens) + self.box_bias).sigmoid()
        return self.det.class_labels_classifier(tokens), boxes

    def detect(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last encoder layer's output -> (logits, boxes): final norm, detection tokens
        (always the last D, whatever happened to the patch tokens before them), heads."""
        x = self.det.vit.layernorm(hidden)
        return self.heads(x[:, -self.config.num_detection_tokens:])

    def forward(self, pixel_values: torch.Tensor, keep_idx: torch.Tensor | None = None):
        return self.detect(self.forward_features(pixel_values, keep_idx)[-1])

    # -- weights ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, image_size: int | tuple[int, int] | None = None) -> "PrunedYolos":
        """Loads our checkpoints and stock HF YOLOS folders alike (same keys, same config);
        `image_size` (N for N x N, or (H, W)) re-grids it for inputs of that shape (see
        `resize_input`)."""
        model = cls(checkpoint.load_config(path))
        model.det.load_state_dict(checkpoint.load_state(path), strict=True)
        if image_size is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            if list(model.config.image_size) != [h, w]:
                model.resize_input((h, w))
        return model.eval()

    def resize_input(self, size: int | tuple[int, int]) -> None:
        """Stores the position embeddings for H x W inputs, interpolated (bicubic) by the HF
        modules exactly as stock YOLOS interpolates them on every call at another size.
        Stock configs are e.g. 800x1333; every export here has one static shape, and the
        token grid follows the config."""
        cfg = self.config
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        for side in (h, w):
            if side < cfg.patch_size or side % cfg.patch_size:
                raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {cfg.patch_size}")
        encoder = self.det.vit.encoder
        with torch.no_grad():
            pos = self.embeddings.interpolation(self.embeddings.position_embeddings, (h, w))
            mid = encoder.interpolation((h, w)) if cfg.use_mid_position_embeddings else None
        cfg.image_size = [h, w]  # the interpolation modules hold this same config
        self.embeddings.position_embeddings = nn.Parameter(pos.contiguous())
        if mid is not None:
            encoder.interpolation.mid_position_embeddings = nn.Parameter(mid.contiguous())
        self.patch_embeddings.image_size = (h, w)
        self.patch_embeddings.num_patches = self.num_patches

    def save_pretrained(self, path: str | Path) -> Path:
        return checkpoint.save(self.det, self.config, path)


def _gather(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, C), idx (B, K) -> (B, K, C)."""
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def sincos_2d(gh: int, gw: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos code of a (gh, gw) grid, (gh*gw, dim)."""
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    return sincos_points(torch.stack([xs.flatten(), ys.flatten()], -1), dim)


def sincos_points(xy: torch.Tensor, dim: int) -> torch.Tensor:
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    parts = []
    for coord in xy.unbind(-1):
        out = coord[:, None] * omega[None]
        parts += [out.sin(), out.cos()]
    code = torch.cat(parts, dim=1)
    return nn.functional.pad(code, (0, dim - code.shape[1]))


@torch.no_grad()
def init_embeddings(model: PrunedYolos, seed: int | None = None) -> None:
    """HF YOLOS starts [CLS], detection and position embeddings at exactly zero: no position
    information and identical detection tokens, which neither trains nor tests anything.
    Truncated-normal (std 0.02) for all, plus sin-cos patch positions and, with anchored boxes,
    detection-token positions at their anchor centres (what broke the training plateau)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    emb = model.embeddings
    params = [emb.cls_token, emb.detection_tokens, emb.position_embeddings]
    if model.config.use_mid_position_embeddings:
        params.append(model.det.vit.encoder.interpolation.mid_position_embeddings)
    for p in params:
        p.copy_(torch.randn(p.shape, generator=gen).clamp_(-2, 2) * 0.02)
    gh, gw = model.grid
    dim = model.config.hidden_size
    emb.position_embeddings[0, 1:1 + gh * gw] += sincos_2d(gh, gw, dim)
    if getattr(model.config, "anchored_boxes", False):
        centres = anchor_boxes(model.config.num_detection_tokens)[:, :2] * torch.tensor([gw, gh])
        emb.position_embeddings[0, -model.config.num_detection_tokens:] += sincos_points(centres, dim)
        last = model.det.bbox_predictor.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
