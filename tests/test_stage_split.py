"""bavit.stage_split: a pipeline's exported graph cut into stage graphs that, run in order,
compute the whole graph (what the LiteRT profile's stage artifacts are converted from)."""
from __future__ import annotations

import pytest
import torch

from bavit.stage_split import assign_stages, split_by_stage


def _run_parts(split, x):
    values = {split.input: x}
    for part in split.parts:
        for name, value in zip(part.outputs, part.module(*[values[n] for n in part.inputs])):
            values[name] = value
    return [values[n] for n in split.outputs]


def _check(pipe, stages):
    x = torch.randn(2, 3, *pipe.input_size, generator=torch.Generator().manual_seed(0))
    gm = torch.export.export(pipe.eval(), (x,)).module()
    split = split_by_stage(gm, (x,))
    assert [p.stage for p in split.parts] == stages
    with torch.no_grad():
        want, got = pipe(x), _run_parts(split, x)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    # every stage holds its own weights: only activations cross a boundary
    for part in split.parts:
        assert all(not isinstance(t, torch.nn.Parameter) for t in part.examples)
        assert all(n not in dict(part.module.named_parameters()) for n in part.inputs)
    return split


def test_yolos_bavit_stages(tiny_pipeline):
    split = _check(tiny_pipeline(0.5), ["reducer", "embed", "encoder", "heads"])
    embed = next(p for p in split.parts if p.stage == "embed")
    assert embed.inputs[0] == split.input and len(embed.inputs) == 2      # pixels and BAViT's kept indices
    assert embed.examples[1].dtype == torch.int64


def test_dense_pipeline_has_no_reducer_stage(tiny_pipeline):
    _check(tiny_pipeline(1.0), ["embed", "encoder", "heads", "other"])   # other: the zero token logits


def test_detr_stages():
    from bavit.pipeline import build_pipeline
    from bavit.reducers import parse

    _check(build_pipeline("random:detr-tiny", parse("bavit"), 0.5), ["reducer", "embed", "encoder", "decoder",
                                                                       "heads"])


def test_interleaved_stages_are_refused():
    class Back(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.detector = torch.nn.Module()
            self.detector.det = torch.nn.Module()
            self.detector.det.bbox_predictor = torch.nn.Linear(4, 4)
            self.classifier = torch.nn.Linear(4, 4)

        def forward(self, x):                      # heads first, then the reducer reads them
            return (self.classifier(self.detector.det.bbox_predictor(x)),)

    gm = torch.export.export(Back(), (torch.randn(1, 4),)).module()
    with pytest.raises(ValueError, match="stages interleave"):
        assign_stages(gm.graph)
