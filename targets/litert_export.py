"""The graph litert-torch converts: the pipeline `torch.export`ed, with what the LiteRT
interpreter cannot run rewritten (the sort rewrite: see targets.tflite_backend). Build side
only (imports torch lazily); shared by the fp32 conversion (targets.tflite_backend) and the
int8 recipe (quant.litert_recipe), which import this module and not each other, and by the
ExecuTorch target and recipe, whose kernel library has no sort either."""
from __future__ import annotations

from typing import Any


def export_for_litert(pipeline: Any, example: tuple) -> tuple[Any, int]:
    """torch.export the pipeline and rewrite what the LiteRT interpreter cannot run.
    Returns (graph module, number of sorts replaced)."""
    import torch

    gm = torch.export.export(pipeline.eval(), example).module()
    return gm, replace_sorts(gm)


def mark_eval(gm: Any) -> Any:
    """Exported graph modules refuse `.eval()`; the graph was captured in eval mode already,
    so only the flag litert-torch warns about ("converted in training mode") is set."""
    gm.training = False
    return gm


def _rank_sort(x: Any, descending: bool) -> tuple[Any, Any]:
    """Stable sort along the last dim without a sort op: rank_i = #{j: x_j before x_i} +
    #{j < i: x_j == x_i}; values / indices are one-hot sums over ranks. Exact for float32
    and for integers below 2**24 (token indices)."""
    import torch

    k = x.shape[-1]
    xf = x if x.dtype == torch.float32 else x.to(torch.float32)
    a, b = xf.unsqueeze(-1), xf.unsqueeze(-2)                  # x_i down, x_j across
    before = (b > a) if descending else (b < a)
    pos = torch.arange(k, device=x.device)
    earlier = pos.unsqueeze(0) < pos.unsqueeze(1)               # [i, j]: j < i
    rank = (before | ((b == a) & earlier)).sum(-1)              # (..., K)
    onehot = (rank.unsqueeze(-1) == pos).to(torch.float32)      # [i, r]
    values = (onehot * xf.unsqueeze(-1)).sum(-2)
    indices = (onehot * pos.to(torch.float32).unsqueeze(-1)).sum(-2).to(torch.int64)
    return (values if x.dtype == torch.float32 else values.to(x.dtype)), indices


def _sorter(descending: bool):
    return lambda t: _rank_sort(t, descending)


def replace_sorts(gm: Any) -> int:
    """Replace each `aten.sort` in an exported graph module by `_rank_sort`'s aten ops, in
    place. The new nodes inherit the sort's metadata (nn_module_stack: quantizers that keep
    the token selector in float keep them in float too)."""
    import operator

    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    aten = torch.ops.aten
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.sort.default, aten.sort.stable):
            continue
        src = node.args[0]
        if node.target is aten.sort.stable:
            dim, desc = node.kwargs.get("dim", -1), node.kwargs.get("descending", False)
        else:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
            desc = node.args[2] if len(node.args) > 2 else node.kwargs.get("descending", False)
        val = src.meta["val"]
        if dim not in (-1, val.dim() - 1):
            raise NotImplementedError(f"sort over dim {dim} of a {val.dim()}-d tensor")
        example = torch.zeros(tuple(int(s) for s in val.shape), dtype=val.dtype)
        sub = make_fx(_sorter(bool(desc)))(example)
        (placeholder,) = [n for n in sub.graph.nodes if n.op == "placeholder"]
        before = set(graph.nodes)
        with graph.inserting_before(node):
            values, indices = graph.graph_copy(sub.graph, {placeholder: src})
        for new in set(graph.nodes) - before:
            for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
                if key in node.meta:
                    new.meta[key] = node.meta[key]
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(values if user.args[1] == 0 else indices)
                graph.erase_node(user)
            else:
                raise NotImplementedError(f"sort output used by {user.format_node()}")
        graph.erase_node(node)
        count += 1
    if count:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return count
