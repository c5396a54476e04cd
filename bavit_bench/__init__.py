"""bavit-bench as a library: the command line's sweep from Python, its rows as a DataFrame.

    import bavit_bench as bb
    df = bb.run(target="openvino", keep=[1.0, 0.5], out="runs/nb")   # python -m bench.run --target ...
    again = bb.load("runs/nb")
    picks = bb.decide(df, max_map_drop=1)

`run` takes bench.run's options as keywords (dashes as underscores; a list for a
comma-separated option; True for a flag) and runs the same code as the command line
(`bench.run.execute`), so the same options write the same rows. Bad input raises
`bavit_bench.UsageError` (a ValueError, one line naming the option) before any work
starts; a run whose cells failed returns their rows, `status` "failed" with the `error`.
The columns are `bench.contracts.Row`'s fields (docs: that class's field comments) plus the
ones reports derive (speed-ups with their intervals, mAP drop, Pareto front)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

__all__ = ["UsageError", "run", "load", "decide", "argv_of"]


class UsageError(ValueError):
    """A bad option or input, said in one line (the command line's exit 2)."""


def argv_of(**options: Any) -> list[str]:
    """bench.run's command line for keyword options: `keep=[1.0, 0.5]` -> `--keep 1.0,0.5`,
    `no_report=True` -> `--no-report`; None and False leave an option out."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def run(**options: Any):
    """Runs a sweep as `python -m bench.run` would with these options; returns the rows of its
    run folder (`out`, default runs/<UTC time>) with the derived columns."""
    from bench import options as cli
    from bench.run import execute

    argv = argv_of(**options)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cli.parse_args(argv)          # argparse's own errors exit; here they raise
    except SystemExit as exc:
        lines = [x for x in err.getvalue().splitlines() if x.strip()]
        raise UsageError(lines[-1] if lines else f"bad options {argv}") from None
    try:
        _, out = execute(argv)
    except cli.UsageError as exc:
        raise UsageError(str(exc)) from None
    if out is None:
        raise UsageError("the run wrote no run folder")
    return load(out)


def load(run_dir: str | Path):
    """A recorded run's rows (results.jsonl, the last row of each cell) with the derived
    columns, as the report has them."""
    from reports.table import add_derived, load_results, sort_cells

    try:
        return sort_cells(add_derived(load_results(run_dir)))
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def decide(df, max_map_drop: float = 1.0, max_latency_ms: float | None = None, max_rss_mb: float | None = None):
    """The report's decision over rows (from `run` or `load`): the fastest cell per scenario
    and target within the limits, as a DataFrame."""
    from reports.decide import check_limits, decide as _decide
    from reports.table import ensure_derived

    try:
        check_limits(max_map_drop, max_latency_ms, max_rss_mb)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return _decide(ensure_derived(df), max_map_drop, max_latency_ms, max_rss_mb)
