"""bavit.stage_split: a pipeline's exported graph cut into stage graphs that, run in order,
compute the whole graph (what the LiteRT profile's stage artifacts are converted from)."""
from __future__ import annotations

import functools

import pytest
import torch

from bavit.stage_split import assign_stages, split_by_stage


def _run_parts(split, x):
    values = {split.input: x}
    for part in split.parts:
        out = part.module(*[values[n] for n in part.inputs])
        assert len(out) == len(part.outputs)
        values.update(zip(part.outputs, out))
    return [values[n] for n in split.outputs]


def _check(pipe, stages):
    x = torch.randn(2, 3, *pipe.input_size, generator=torch.Generator().manual_seed(0))
    gm = torch.export.export(pipe.eval(), (x,)).module()
    split = split_by_stage(gm, (x,))
    assert [p.stage for p in split.parts] == stages
    with torch.no_grad():
        want, got = pipe(x), _run_parts(split, x)
    assert len(want) == len(got) == 3
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    _check_boundaries(gm, split)
    return split


def _check_boundaries(gm, split):
    """Each stage reads only the pipeline input and earlier stages' outputs, and holds its own
    weights: no weight or buffer of the graph crosses a boundary."""
    weights = {n.name for n in gm.graph.nodes if n.op == "get_attr"}
    available = {split.input}
    for part in split.parts:
        assert set(part.inputs) <= available and not set(part.inputs) & weights, (part.stage, part.inputs)
        for node in part.module.graph.nodes:
            if node.op == "get_attr":
                value = functools.reduce(getattr, node.target.split("."), part.module)
                assert isinstance(value, torch.Tensor)   # copied in, not an input
        available |= set(part.outputs)


def test_yolos_bavit_stages(tiny_pipeline):
    split = _check(tiny_pipeline(0.5), ["reducer", "embed", "encoder", "heads"])
    embed = next(p for p in split.parts if p.stage == "embed")
    assert embed.inputs[0] == split.input and len(embed.inputs) == 2      # pixels and BAViT's kept indices
    assert embed.examples[1].dtype == torch.int64


def test_dense_pipeline_has_no_reducer_stage(tiny_pipeline):
    _check(tiny_pipeline(1.0), ["embed", "encoder", "heads", "other"])   # other: the zero token logits


def test_detr_stages():
    from bavit.reducers import build_pipeline, parse

    _check(build_pipeline("random:detr-tiny", parse("bavit"), 0.5), ["reducer", "embed", "encoder", "decoder",
                                                                       "heads"])


def test_int8_dequantize_stays_with_the_op_that_reads_it(tiny_pipeline):
    """PT2E q/dq nodes carry no module path: each dequantize joins its reader's stage (an int8
    op without its dequantize would run in float in a stage artifact), and the stages of the
    quantized graph recompute it exactly."""
    import numpy as np

    from bavit.stage_split import split_by_stage
    from quant import litert_recipe

    pipe = tiny_pipeline(0.5)
    calib = np.random.default_rng(0).normal(size=(8, 3, 64, 64)).astype(np.float32)

    def dequantizes(graph) -> list:
        return [n for n in graph.nodes if n.op == "call_function" and "dequantize_per" in str(n.target)]

    # the recipe keeps the BAViT classifier float: no int8 op of it is left in the reducer stage
    default, _, _, _ = litert_recipe.quantized_module(pipe, calib, 1)
    assert not any(assign_stages(default.graph)[dq] == "reducer" for dq in dequantizes(default.graph))
    # quantized as it was (its head alone float), q/dq nodes sit in both stages: the case to split
    classifier_int8 = tuple(m for m in litert_recipe.FLOAT_MODULES if m != "classifier") + ("classifier.head",)
    gm, _, _, _ = litert_recipe.quantized_module(pipe, calib, 1, classifier_int8)
    stage = assign_stages(gm.graph)
    dqs = dequantizes(gm.graph)
    assert len(dqs) > 20
    for dq in dqs:
        readers = {stage[u] for u in dq.users}
        if len(readers) == 1:
            assert stage[dq] in readers, dq.name
    assert any(stage[dq] == "encoder" for dq in dqs) and any(stage[dq] == "reducer" for dq in dqs)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    split = split_by_stage(gm, (x,))
    with torch.no_grad():
        want, got = gm(x), _run_parts(split, x)
    assert all(torch.equal(w, g) for w, g in zip(want, got))
    _check_boundaries(gm, split)


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
