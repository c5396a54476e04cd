"""python -m bench.run: benchmark token-reduced detectors (BAViT and its baselines) across targets,
precisions, reducers, keep ratios, batch sizes and scenarios; write results.jsonl, report.csv and
report.html into --out.

Scenarios (MLPerf LoadGen's names): single-stream times batch-1 queries one after another
(latency percentiles); offline times the highest throughput each runtime's own practice
gives at each --batch (OpenVINO: THROUGHPUT hint, AsyncInferQueue with the optimal number
of requests in flight; torch and TFLite: back-to-back calls on the batch).

Phases, each in fresh subprocesses, so a crash or hang costs one cell and peak memory is
the cell's own:
  1. build: one torch process converts (or finds in the cache) every artifact;
  2. cold: each cell's own process, importing only its runtime, records load/compile time,
     first-inference latency and peak RSS, then scores mAP when the cell scores its model
     (once per distinct model, never inside a timed window; reused from the cache when the
     artifact and the data are unchanged);
  3. rounds: --processes fresh serving processes per target, one after another, each loading
     all the target's cells and timing its share of the --rounds rounds; within a round every
     cell runs twice, in a palindrome order (A B C C B A), so a drift of the machine's speed
     hits the cells that are compared alike. Figures are medians over all rounds, with a 95 %
     interval (bench.stats.interval); a cell is noisy when that interval reaches > 5 % from
     its median or more tasks than its threads were runnable while it ran."""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from bench.build import build_phase
from bench.contracts import MeasureOptions
from bench.measure import Measure
from bench.options import UsageError, parse_args, quiet_import_noise, terminate
from bench.plan import prepare
from bench.procs import Children
from bench.system import fingerprint


def run(argv: list[str] | None = None) -> int:
    """The command line: exit 0, 1 when a cell failed, 2 on bad input (one line)."""
    try:
        return execute(argv)[0]
    except UsageError as err:
        print(f"bench.run: error: {err}", file=sys.stderr)
        return 2


def execute(argv: list[str] | None) -> tuple[int, Path | None]:
    """(exit code, run folder): the one implementation beneath the command line and
    `bavit_bench.run`. Bad input raises UsageError before any work starts."""
    args = parse_args(argv, description=__doc__)
    if threading.current_thread() is threading.main_thread():   # a notebook's thread may be another
        signal.signal(signal.SIGTERM, terminate)
    quiet_import_noise()
    if args.cluster:          # build here, measure on the cluster's devices
        from bench.cluster import run_cluster
        return run_cluster(args, argv), Path(args.out) if args.out else None
    if args.devices:
        raise UsageError("--devices names devices of a cluster: give --cluster too")
    p = prepare(args, argv)
    measure = Measure(p.measure, MeasureOptions(args.profile, args.profile_seconds, args.timeout,
                                                str(p.cache / "accuracy")), p.out, p.run_id, fingerprint())
    measure.timing.update(p.timing)
    built, ok_cells, not_built = build_phase(p.todo, p.build, p.work, p.logs, measure.timing)
    for nb in not_built:
        measure.write(measure.row(nb.cell, nb.status, error=nb.error))
    failed = measure.run(ok_cells, built)
    (p.out / "timing.json").write_text(json.dumps(measure.timing, indent=1))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in measure.timing.items()), file=sys.stderr)
    if not args.no_report:
        _report(p.out, args)
    return (1 if failed else 0), p.out


def _report(out: Path, args) -> None:
    try:
        from reports.build import build, summary_text
        build(out, max_map_drop=args.max_map_drop, max_latency_ms=args.max_latency_ms, max_rss_mb=args.max_rss_mb)
        print(summary_text(out, max_map_drop=args.max_map_drop, max_latency_ms=args.max_latency_ms,
                           max_rss_mb=args.max_rss_mb))
        print(f"\nreport: {out / 'report.html'}")
    except Exception as err:  # the results are safe in results.jsonl whatever happens here
        print(f"bench.run: report failed: {type(err).__name__}: {err}", file=sys.stderr)


def main() -> None:
    try:
        sys.exit(run())
    except KeyboardInterrupt:
        Children.kill_all()
        print("bench.run: interrupted; finished cells are in results.jsonl (rerun with --resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
