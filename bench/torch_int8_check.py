"""python -m bench.torch_int8_check: is the `torch` target's eager int8 timed fairly?

The `torch` target times the `torch.export`ed graph run eagerly (`ExportedProgram.module()`),
not the quantized `nn.Module` the recipe produced. torchao's dynamic int8 puts many small
ops around every `torch._int_mm` (the activation's scale, rounding, casts, tensor-subclass
unwrapping), so one could suspect the exported graph of adding Python dispatch that the
module does not pay. This times, in one process and in alternating order so that the
machine's drift hits all alike: the fp32 module, its exported graph, the int8 module, its
exported graph, and (for scale only; that is the `inductor` target's business) the int8
module under `torch.compile`. Printed: median ms per batch over --rounds, [min-max].

It refuses CPUs where `torch._int_mm` has no int8 dot-product kernel, as the target does."""
from __future__ import annotations

import argparse
import copy
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.torch_int8_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="weights folder (default: the demo weights)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per candidate per round")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile line")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.rounds < 1 or a.seconds <= 0:
        print("--batch, --rounds and --seconds must be positive", file=sys.stderr)
        return 2

    from targets.torch_backend import int8_matmul_unavailable
    why = int8_matmul_unavailable()
    if why:
        print(f"torch int8: {why}", file=sys.stderr)
        return 2

    import torch

    from bavit.reducers import build_pipeline
    from bench.loop import back_to_back
    from quant import torchao_recipe
    from targets.base import Runner

    torch.set_num_threads(a.threads)
    pipe = build_pipeline(a.weights, None, 1.0).eval()
    x = torch.randn(a.batch, 3, *pipe.input_size)
    int8 = copy.deepcopy(pipe)
    torchao_recipe.quantize(int8)
    with torch.no_grad():
        candidates = {"fp32 module": pipe, "fp32 exported": torch.export.export(pipe, (x,)).module(),
                      "int8 module": int8, "int8 exported": torch.export.export(int8, (x,)).module()}
    if not a.no_compile:
        candidates["int8 torch.compile"] = torch.compile(int8)
    # each candidate as the harness's loop calls a model: numpy in, the torch target's way
    runners = {name: Runner(lambda p, m=model: m(torch.from_numpy(p)), name) for name, model in candidates.items()}
    pixels = x.numpy()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    with torch.inference_mode():
        for runner in runners.values():             # warm-up (and compile) outside the rounds
            for _ in range(3):
                runner(pixels)
        for r in range(a.rounds):
            for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
                _, calls, elapsed, _ = back_to_back(runners[name], pixels, a.seconds)
                times[name].append(elapsed / calls * 1000)
    print(f"batch {a.batch}, {a.threads} threads, {a.rounds} rounds of {a.seconds:g} s "
          f"(cpu capability {torch.backends.cpu.get_cpu_capability()})")
    base = statistics.median(times["fp32 module"])
    for name, ms in times.items():
        med = statistics.median(ms)
        print(f"{name:20s} {med:8.2f} ms [{min(ms):.2f}-{max(ms):.2f}]  {base / med:5.2f}x of the fp32 module")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
