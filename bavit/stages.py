"""The stages a pipeline's time is split into, by module path: what `--profile` reports.

Torch-free on purpose: the OpenVINO and LiteRT measuring processes map their runtime's node
names (which carry the module path the node was traced from) onto stages without importing
torch. A method acting inside the encoder (ToMe, EViT-style attention pruning) is part of
`encoder`; BAViT's classifier and token selection are `reducer`."""
from __future__ import annotations

STAGES = ("reducer", "embed", "encoder", "decoder", "heads", "other")
STAGE_TITLES = {
    "reducer": "token reducer (BAViT classifier + selection)",
    "embed": "patch embedding / stem / CNN backbone",
    "encoder": "encoder layers",
    "decoder": "decoder layers (DETR)",
    "heads": "class and box heads",
    "other": "outside any module (gathers, reshapes, constants)",
}
# module path prefix -> stage, first match (paths relative to the pipeline module)
_RULES: tuple[tuple[str, str], ...] = (
    ("classifier", "reducer"),
    ("selector", "reducer"),
    ("detector.det.vit.embeddings", "embed"),
    ("detector.det.model.backbone", "embed"),
    ("detector.det.model.input_projection", "embed"),
    ("detector.det.vit.encoder", "encoder"),
    ("detector.det.vit.layernorm", "encoder"),
    ("detector.det.model.encoder", "encoder"),
    ("detector.det.model.decoder", "decoder"),
    ("detector.det.class_labels_classifier", "heads"),
    ("detector.det.bbox_predictor", "heads"),
)


def stage_of(module_path: str) -> str:
    for prefix, stage in _RULES:
        if module_path == prefix or module_path.startswith(prefix + "."):
            return stage
    return "other"


def rules_key() -> str:
    """The stage names and rules, hashed: artifacts cut by other rules are not reused."""
    import hashlib

    return hashlib.sha256(repr((STAGES, _RULES)).encode()).hexdigest()[:12]
