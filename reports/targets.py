"""python -m reports.targets RUN [--detector NAME] [--precision fp32,int8]: one detector's
cells of a recorded run, every target side by side, as a markdown table (figure and speed-up
with their 95 % intervals, mAP, the precision read back from the runtime). The per-target
tables of docs/targets.md are this command's output, pasted."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def side_by_side(run: Path, detector: str | None = None, precisions: tuple[str, ...] = ("fp32", "int8")) -> str:
    import pandas as pd

    rows = pd.read_csv(Path(run) / "report.csv")
    ok = rows[rows.status == "ok"]
    if detector is None:     # the pruning-aware detector where the run has one, else the reference
        names = list(dict.fromkeys(ok.detector))
        detector = next((n for n in names if n != ok.reference_detector.iloc[0]), names[0]) if names else ""
    ok = ok[(ok.detector == detector) & ok.precision.isin(precisions)]
    out = [f"detector `{detector}`; speed-up against the target's dense fp32 cell of the reference detector",
           "",
           "| scenario | target | precision | keep | figure [95 %] | speed-up [95 %] | mAP | executed |",
           "|---|---|---|---:|---:|---:|---:|---|"]
    ok = ok.sort_values(["scenario", "target", "precision", "keep"], ascending=[False, True, True, False])
    for _, r in ok.iterrows():
        if r.scenario == "single-stream":
            fig = f"p50 {r.latency_p50_ms:.1f} ms [{r.latency_p50_lo:.1f}–{r.latency_p50_hi:.1f}]"
        else:
            fig = f"{r.throughput_ips:.1f} img/s [{r.throughput_lo:.1f}–{r.throughput_hi:.1f}]"
        speed = f"{r.speedup_vs_target_dense_fp32:.2f}× [{r.speedup_lo:.2f}–{r.speedup_hi:.2f}]"
        mean_ap = "–" if pd.isna(r["map"]) else f"{r['map']:.3f}"
        out.append(f"| {r.scenario} b{r.batch} | {r.target} | {r.precision} | {r.keep:g} | {fig} | {speed} | "
                   f"{mean_ap} | {r.executed_precision} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder with report.csv")
    p.add_argument("--detector", help="detector folder name (default: the pruning-aware one, else the reference)")
    p.add_argument("--precision", default="fp32,int8", help="comma-separated precisions to show")
    args = p.parse_args(argv)
    if not (Path(args.run) / "report.csv").is_file():
        print(f"reports.targets: error: {args.run}: no report.csv (run python -m reports.build on it first)",
              file=sys.stderr)
        return 2
    print(side_by_side(Path(args.run), args.detector, tuple(args.precision.split(","))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
