"""DETR that runs its transformer encoder on a subset of the backbone's feature tokens.

Built from Hugging Face `DetrForObjectDetection` (kept whole as `self.det`, so stock folders
load unchanged) with `transformers`' own ResNet backbone: no timm, no torchvision. The
backbone's stage-3 output (`out_features=["stage3"]`, stride 16; transformers' ResNet has
no DC5 dilation) gives one feature token per 16x16 patch, the grid BAViT's token grid maps
onto.

What pruning changes, against stock DETR:
- the CNN backbone and the 1x1 input projection always run on the full image: that fixed
  cost is part of what the benchmark shows;
- the flattened features and their sine position embeddings are gathered with the same
  sorted `keep_idx`; the encoder runs on those K tokens;
- the decoder cross-attends to the K encoder outputs (with their position embeddings); the
  object queries, heads and everything else are untouched.

Inputs are one static letterboxed shape (`image_size` in the config, this project's key, as
YOLOS configs carry it): the padding is part of the image, so the pixel mask is all ones and
the sine embedding is a constant of the grid, computed once by HF's own module. With every
token kept the output equals stock `DetrForObjectDetection` on that input.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from bavit import checkpoint
from bavit.yolos import TokenGrid, _gather, anchor_boxes

STRIDE = 16


def detr_config(image_size: tuple[int, int] = (256, 256), **overrides) -> DetrConfig:
    """A small DETR for CPU: ResNet-18-shaped basic blocks (narrow), stage-3 features at
    stride 16, a 192-wide transformer (YOLOS-Ti's width) with 6 encoder and 3 decoder layers."""
    backbone = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2],
                            layer_type="basic", out_features=["stage3"])
    cfg = dict(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
               d_model=192, encoder_layers=6, decoder_layers=3, encoder_attention_heads=3,
               decoder_attention_heads=3, encoder_ffn_dim=768, decoder_ffn_dim=768, num_queries=64,
               num_labels=4, dropout=0.0, image_size=list(image_size), box_frame="input", anchored_boxes=True)
    cfg.update(overrides)
    return DetrConfig(**cfg)


def tiny_detr_config(**overrides) -> DetrConfig:
    """~0.5M parameters at 64x64: a 4x4 feature grid, for tests."""
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage3"])
    cfg = dict(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
               d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8,
               num_labels=4, dropout=0.0, image_size=[64, 64], box_frame="input")
    cfg.update(overrides)
    return DetrConfig(**cfg)


def check_config(config: DetrConfig, where: str = "detector config") -> None:
    """One line for what cannot load here: a timm backbone (this project has no timm), or a
    backbone whose feature stride is not the 16 BAViT's grid needs."""
    bb = config.backbone_config
    kind = bb.get("model_type") if isinstance(bb, dict) else getattr(bb, "model_type", None)
    if getattr(config, "use_timm_backbone", False) or kind == "timm_backbone":
        raise ValueError(f"{where}: DETR with a timm backbone cannot load here (no timm, no torchvision); "
                         "convert it to transformers' ResNet (backbone_config model_type 'resnet', "
                         "use_timm_backbone false) or train one with bavit.train detector --family detr")
    if kind != "resnet":
        raise ValueError(f"{where}: DETR backbone '{kind}' is not supported (transformers' ResNet only)")
    if getattr(config, "position_embedding_type", "sine") != "sine":
        raise ValueError(f"{where}: DETR position_embedding_type '{config.position_embedding_type}': only "
                         "'sine' (a constant of the static grid) is supported")
    if list(getattr(bb, "out_features", [])) != ["stage3"]:
        raise ValueError(f"{where}: DETR backbone out_features {bb.out_features} do not give stride-16 "
                         "features: set out_features ['stage3']")


def sine_code(x: torch.Tensor, y: torch.Tensor, d_model: int, temperature: float = 10000.0) -> torch.Tensor:
    """(P, d_model) DETR sine position code of points at normalised (x, y), the formula of HF's
    DetrSinePositionEmbedding (normalised, scale 2*pi), where its grid is (i + 1) / g."""
    n = d_model // 2
    dim_t = temperature ** (2 * torch.div(torch.arange(n), 2, rounding_mode="floor").float() / n)

    def one(v: torch.Tensor) -> torch.Tensor:
        p = v[:, None] * (2 * torch.pi) / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    return torch.cat((one(y), one(x)), dim=1)


class PrunedDetr(TokenGrid, nn.Module):
    """DETR detector; `forward(pixels, keep_idx)` runs the encoder on the feature tokens in
    keep_idx only (module docstring)."""

    family = "detr"

    def __init__(self, config: DetrConfig) -> None:
        super().__init__()
        check_config(config)
        if not getattr(config, "image_size", None):
            raise ValueError("DETR config needs image_size (the static input shape): pass --image-size")
        h, w = config.image_size
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"image size {h}x{w} is not a multiple of the feature stride {STRIDE}")
        self.config = config
        self.det = DetrForObjectDetection(config)
        self.register_buffer("spatial_pos", self._sine_positions(), persistent=False)
        ref = anchor_boxes(config.num_queries).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("box_bias", torch.logit(ref) if getattr(config, "anchored_boxes", False) else None,
                             persistent=False)

    def _sine_positions(self) -> torch.Tensor:
        """(1, N, d) sine embedding of the feature grid with an all-ones mask, by HF's module."""
        gh, gw = self.grid
        shape = torch.Size([1, self.config.d_model, gh, gw])
        with torch.no_grad():
            pos = self.det.model.position_embedding(shape=shape, device="cpu", dtype=torch.float32,
                                                    mask=torch.ones(1, gh, gw, dtype=torch.bool))
        return pos.flatten(2).transpose(1, 2).contiguous()

    # -- shape ----------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return STRIDE

    def layer_tokens(self, k: int) -> list:
        """Token-layers at k feature tokens: each encoder layer sees k. A decoder layer's
        attention is counted at q + k/2 tokens (the cross-attention's key and value projections
        run on the k, its query and output projections and the self-attention on the q
        queries) and its MLP at q. The CNN backbone, the same at every k, is not counted, so
        DETR's ideal speed-up is further above what can be measured than YOLOS's."""
        from bavit.tokens import LayerTokens

        cfg = self.config
        q = cfg.num_queries
        return ([LayerTokens(f"detector.encoder.{i}", k, k) for i in range(cfg.encoder_layers)]
                + [LayerTokens(f"detector.decoder.{i}", q + k / 2, q) for i in range(cfg.decoder_layers)])

    def resize_input(self, size: tuple[int, int]) -> None:
        """A static H x W input: the sine embedding is a function of the grid, nothing is
        interpolated."""
        h, w = int(size[0]), int(size[1])
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"image size {h}x{w} is not a multiple of the feature stride {STRIDE}")
        self.config.image_size = [h, w]
        self.spatial_pos = self._sine_positions()

    # -- forward --------------------------------------------------------------------------------
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone + input projection on the full image: (B, N, d) in raster order. The
        backbone runs its stages up to the feature stage only: transformers' ResNetBackbone
        runs every stage whatever `out_features` asks for, so stage 4 would be computed and
        dropped (its weights stay, for stock folders to load)."""
        model = self.det.model
        backbone = model.backbone.model
        x = backbone.embedder(pixel_values)
        for stage in backbone.encoder.stages[:backbone.stage_names.index(backbone.out_features[-1])]:
            x = stage(x)
        return model.input_projection(x).flatten(2).transpose(1, 2)

    def encode(self, pixel_values: torch.Tensor, keep_idx: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output on the kept feature tokens (all when None), and their position
        embeddings: (B, K, d) each."""
        x = self.features(pixel_values)
        pos = self.spatial_pos.expand(x.shape[0], -1, -1)
        if keep_idx is not None:
            x, pos = _gather(x, keep_idx), _gather(pos, keep_idx)
        x = nn.functional.dropout(x, p=self.config.dropout, training=self.training)   # as DetrEncoder
        for layer in self.det.model.encoder.layers:
            x = layer(x, None, spatial_position_embeddings=pos)
        return x, pos

    def decode(self, memory: torch.Tensor, pos: torch.Tensor, every_layer: bool = False) -> list[torch.Tensor]:
        """The object queries after the last decoder layer (or after every one, for DETR's
        auxiliary loss), through the decoder's final norm: a list of (B, Q, d). A config with
        `auxiliary_loss` runs as HF's DetrDecoder then does: each layer's normed output feeds
        the next, and the last is normed twice."""
        decoder = self.det.model.decoder
        chained = self.config.auxiliary_loss
        query_pos = self.det.model.query_position_embeddings.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        q, out = torch.zeros_like(query_pos), []
        for i, layer in enumerate(decoder.layers):
            q = layer(q, None, pos, query_pos, memory)
            if chained:
                q = decoder.layernorm(q)
            if every_layer or i == len(decoder.layers) - 1:
                out.append(decoder.layernorm(q))
        return out

    def heads(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and boxes; with `anchored_boxes` (this project's option, off for stock
        folders) each query's box is relative to a fixed reference box, as in YOLOS here."""
        boxes = self.det.bbox_predictor(queries)
        if self.box_bias is not None:
            boxes = boxes + self.box_bias
        return self.det.class_labels_classifier(queries), boxes.sigmoid()

    @torch.no_grad()
    def init_anchors(self) -> None:
        """For training from scratch with anchored boxes: each query's position embedding starts
        as the encoder's sine code at its anchor's centre, and the last box layer at zero, so
        every query starts on its own reference box and Hungarian matching is stable from the
        first step (YOLOS's fix for the same plateau)."""
        if self.box_bias is None:
            raise ValueError("init_anchors needs anchored_boxes in the config")
        gh, gw = self.grid
        centres = anchor_boxes(self.config.num_queries)[:, :2]
        # HF's grid code is at (i + 1) / g for cell i, whose centre is (i + 0.5) / g
        code = sine_code(centres[:, 0] + 0.5 / gw, centres[:, 1] + 0.5 / gh, self.config.d_model)
        self.det.model.query_position_embeddings.weight.copy_(code)
        last = self.det.bbox_predictor.layers[-1]
        last.weight.zero_()
        last.bias.zero_()

    def forward(self, pixel_values: torch.Tensor, keep_idx: torch.Tensor | None = None):
        memory, pos = self.encode(pixel_values, keep_idx)
        return self.heads(self.decode(memory, pos)[-1])

    # -- weights --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, image_size: int | tuple[int, int] | None = None) -> PrunedDetr:
        config = checkpoint.load_config(path)
        check_config(config, f"{path}/config.json")
        if image_size is not None:
            config.image_size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        model = cls(config)
        # HF's loader, for its key renames: hub DETR checkpoints predate transformers 5's module
        # names (backbone.conv_encoder, out_proj, fc1); every weight must be found
        stock, info = DetrForObjectDetection.from_pretrained(str(path), config=config, local_files_only=True,
                                                             output_loading_info=True)
        missing = [k for k in info["missing_keys"] if "num_batches_tracked" not in k]
        unexpected, mismatched = list(info["unexpected_keys"]), list(info.get("mismatched_keys", []))
        if missing or unexpected or mismatched:
            raise ValueError(f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}, mismatched {mismatched[:3]})")
        model.det.load_state_dict(stock.state_dict(), strict=True)
        return model.eval()

    def thaw_backbone(self) -> None:
        """For training from scratch: HF's DETR freezes the backbone's stem and its BatchNorm
        (`DetrFrozenBatchNorm2d`, statistics as constant buffers), right for an ImageNet
        backbone and wrong for a random one. Every backbone weight becomes trainable and each
        frozen norm a BatchNorm2d with the same statistics; `save_pretrained` freezes them back,
        so saved folders keep stock DETR's layout."""
        from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

        self._swap_norms(DetrFrozenBatchNorm2d, lambda n: nn.BatchNorm2d(n, eps=1e-5))   # HF's fixed epsilon
        for p in self.det.model.backbone.parameters():
            p.requires_grad_(True)

    def freeze_backbone_norms(self) -> None:
        """The inverse of `thaw_backbone`'s norm swap: each BatchNorm2d back to HF's frozen one."""
        from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

        self._swap_norms(nn.BatchNorm2d, DetrFrozenBatchNorm2d)

    def _swap_norms(self, old: type, make) -> None:
        """Each backbone norm of type `old` replaced by `make(channels)` holding its statistics."""
        for module in list(self.det.model.backbone.model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, old):
                    norm = make(child.weight.shape[0])
                    with torch.no_grad():
                        for t in ("weight", "bias", "running_mean", "running_var"):
                            getattr(norm, t).copy_(getattr(child, t))
                    setattr(module, name, norm)

    def save_pretrained(self, path: str | Path) -> Path:
        self.freeze_backbone_norms()
        return checkpoint.save(self.det, self.config, path)
