"""A pipeline's exported graph cut into one graph per stage (bavit.stages), for runtimes that
cannot time a sub-graph inside one model (the LiteRT interpreter): each stage becomes its own
artifact, same weights and shapes, and the stages run one after another.

Every op node gets the stage of its module path; a node outside any stage's modules (the
token gather, the box sigmoid, reshapes in `PrunedYolos` itself) joins the latest stage among
its producers, or, computing from inputs and constants only, the earliest among its users. A
PT2E quantize / dequantize pair (they carry no module path) joins the op that reads it, so an
int8 op's dequantize is in the op's own stage. The
stages must then follow each other in `STAGES` order, each reading only the pipeline's input
and earlier stages' outputs; a method that interleaves them (a reducer inside the encoder is
`encoder` already) is refused with the node that breaks the order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bavit.stages import STAGES, stage_of

_ORDER = {s: i for i, s in enumerate(STAGES)}


@dataclass(frozen=True)
class StagePart:
    """One stage's graph: which values it reads and writes, by name in the split graph."""
    stage: str
    module: Any                    # torch.fx.GraphModule
    inputs: tuple[str, ...]        # value names, in the module's argument order
    outputs: tuple[str, ...]       # value names, in the module's return order
    examples: tuple[Any, ...]      # example input tensors (what the stage sees on the example)


@dataclass(frozen=True)
class StageSplit:
    input: str                     # the pipeline input's value name
    parts: tuple[StagePart, ...]
    outputs: tuple[str, ...]       # the pipeline's outputs, by value name, in return order


def _dense(value: Any) -> Any:
    """Stage examples are contiguous copies: a stage is compiled for its example's strides (a
    slice of the hidden state is a strided view), and runtimes hand stages dense arrays."""
    return value.detach().contiguous().clone() if hasattr(value, "contiguous") else value


def module_path(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def assign_stages(graph: Any) -> dict[Any, str]:
    """Op node -> stage, as the module docstring says."""
    ops = [n for n in graph.nodes if n.op == "call_function"]
    stage = {n: stage_of(module_path(n)) for n in ops}
    for n in reversed(ops):                         # PT2E q/dq carry no module: they go with their users,
        if stage[n] == "other" and _is_qdq(n):      # so an int8 op keeps its dequantize in its own stage
            found = [stage[u] for u in n.users if u in stage and stage[u] != "other"]
            if found:
                stage[n] = min(found, key=_ORDER.__getitem__)
    for n in ops:                                   # forward: latest producer stage
        if stage[n] == "other":
            found = [stage[p] for p in n.all_input_nodes if p in stage and stage[p] != "other"]
            if found:
                stage[n] = max(found, key=_ORDER.__getitem__)
    for n in reversed(ops):                         # backward: earliest user stage
        if stage[n] == "other":
            found = [stage[u] for u in n.users if u in stage and stage[u] != "other"]
            if found:
                stage[n] = min(found, key=_ORDER.__getitem__)
    for n in ops:
        for p in n.all_input_nodes:
            if p in stage and _ORDER[stage[p]] > _ORDER[stage[n]]:
                raise ValueError(f"stages interleave: {n.name} ({stage[n]}) reads {p.name} ({stage[p]}), "
                                 "so they cannot run as separate artifacts in stage order")
    return stage


def _is_qdq(node: Any) -> bool:
    return node.op == "call_function" and "quantize_per" in str(node.target)


def _is_quantize(node: Any) -> bool:
    target = str(node.target)
    return node.op == "call_function" and "quantize_per" in target and "dequantize" not in target


def localise_quantize(graph: Any, stage: dict[Any, str]) -> int:
    """A quantized (PT2E q/dq) graph may quantize a value in one stage and dequantize it in
    another; a stage cannot return a quantized tensor (litert-torch fuses the q/dq pair into
    the tensor's type), so each other stage gets its own copy of the quantize op, reading the
    float value. Returns the copies made."""
    copies = 0
    for node in [n for n in graph.nodes if _is_quantize(n)]:
        foreign = [u for u in node.users if u in stage and stage[u] != stage[node]]
        for name in dict.fromkeys(stage[u] for u in foreign):
            first = next(u for u in graph.nodes if u in foreign and stage[u] == name)
            with graph.inserting_before(first):
                copy = graph.node_copy(node)
            stage[copy] = name
            for u in foreign:
                if stage[u] == name:
                    u.replace_input_with(node, copy)
            copies += 1
    return copies


def split_by_stage(gm: Any, example: tuple) -> StageSplit:
    """`gm` (an exported graph module taking one input) cut into stage graphs, with the
    example inputs each stage sees when `gm` runs on `example`. Not torch.fx's split_module:
    that turns every weight a stage reads into an input; here each stage holds its own."""
    import copy

    import torch
    from torch import fx

    gm = copy.deepcopy(gm)
    stage = assign_stages(gm.graph)
    if localise_quantize(gm.graph, stage):
        gm.recompile()
    used = sorted(set(stage.values()), key=_ORDER.__getitem__)
    (placeholder,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    with torch.no_grad():
        run = fx.Interpreter(gm, garbage_collect_values=False)
        run.run(*example)
    parts = []
    for name in used:
        ops = [n for n in gm.graph.nodes if stage.get(n) == name]
        own = set(ops)
        inputs = list(dict.fromkeys(p for n in ops for p in n.all_input_nodes
                                    if p not in own and p.op != "get_attr"))
        outputs = [n for n in ops if any(u not in own for u in n.users)]
        graph = fx.Graph()
        env = {}
        for p in inputs:
            env[p] = graph.placeholder(p.name)
            env[p].meta = dict(p.meta)

        def arg(p: Any) -> Any:
            if p not in env:                       # a weight or buffer: the stage keeps it
                env[p] = graph.get_attr(p.target)
                env[p].meta = dict(p.meta)
            return env[p]

        for n in ops:
            env[n] = graph.node_copy(n, arg)
        graph.output(tuple(env[n] for n in outputs))
        module = fx.GraphModule(gm, graph)
        module.training = False
        parts.append(StagePart(name, module, tuple(p.name for p in inputs), tuple(n.name for n in outputs),
                               tuple(_dense(run.env[p]) for p in inputs)))
    ret = output.args[0]
    ret = ret if isinstance(ret, (tuple, list)) else (ret,)
    return StageSplit(placeholder.name, tuple(parts), tuple(r.name for r in ret))
