"""Quantization: one calibration set shared by all backends, one recipe module per backend.
Every recipe exposes NAME and SETTINGS, which go into each result row."""
