"""BAViT: background-aware token pruning in front of a YOLOS detector."""
