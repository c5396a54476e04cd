"""The measuring side: built artifacts through cold start + accuracy, timed rounds and
profiles, into rows. `bench.run` calls it on the machine that built them; `python -m
bench.measure BUNDLE --out RUN` calls it on a device, from a bundle of `bench.export`.

Imports neither torch nor transformers (nor PIL, pandas, pycocotools): on a device it runs with
numpy, psutil, one runtime and, for mAP, faster-coco-eval. Each cell's figures come from its own
worker process (bench.worker), as in bench.run.

Phases per target: cold start (each cell's own process: load/compile time, first inference,
peak RSS; then the accuracy pass where the cell scores its model), then the timed rounds (one
serving process per target, palindrome-interleaved rounds), then profiles (--profile)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.bundle import BundleError, read_bundle, resolved
from bench.cells import Cell, append_row, finished_cells, has_rows, models_of, start_over
from bench.contracts import (
    AccuracySpec,
    Built,
    ColdResult,
    ColdSpec,
    MeasureOptions,
    MeasurePlan,
    ProfileResult,
    ProfileSpec,
    Row,
    ServeCell,
    ServeSpec,
    Slice,
    digest,
)
from bench.procs import Children, process_rounds, run_cold, run_one, schedule, time_target
from targets.base import SINGLE_STREAM


class Measure:
    """One run's cells through cold start + accuracy, timed rounds and profiles; rows are
    appended as each target finishes (failed cells at once)."""

    def __init__(self, plan: MeasurePlan, options: MeasureOptions, out: Path, run_id: str, system: dict) -> None:
        self.plan, self.options, self.out, self.run_id, self.system = plan, options, out, run_id, system
        self.s = plan.settings
        self.work, self.logs = out / "work", out / "logs"
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timing: dict[str, float] = {}
        self.failed = 0

    # -- rows ----------------------------------------------------------------------------------------
    def row(self, cell: Cell, status: str, **fields) -> dict:
        m, s, p = cell.model, self.s, self.plan
        row = Row(cell_id=cell.cell_id, model_id=m.model_id, target=m.target, precision=m.precision,
                  reducer=m.reducer, keep=m.keep, batch=m.batch, scenario=cell.scenario, status=status,
                  settings_key=s.key, run_id=self.run_id, model=s.model, detector=m.detector,
                  reference_detector=s.reference_detector, data=f"{s.data}:{s.split}",
                  data_classes=",".join(p.data_classes), box_frame=p.box_frame, threads=s.threads,
                  reducer_options=p.reducer_options[m.reducer], image_size=f"{p.size[0]}x{p.size[1]}",
                  started_at=datetime.now(UTC).isoformat(), built_on=p.built_on, bundle=p.bundle,
                  **self.system)
        return asdict(Row(**{**asdict(row), **fields}))

    def write(self, row: dict) -> None:
        self.failed += row["status"] == "failed"
        append_row(self.out, row)

    def add_time(self, name: str, seconds: float) -> None:
        self.timing[name] = self.timing.get(name, 0.0) + seconds

    def _tick(self, name: str, since: float) -> None:
        self.add_time(name, time.monotonic() - since)

    # -- the phases -------------------------------------------------------------------------------
    def run(self, cells: list[Cell], built: dict[str, Built]) -> int:
        """`cells`: built ok (their `built` entries). Returns the number of failed rows written."""
        from tqdm import tqdm

        scorers = self._scorers(cells)
        for target in dict.fromkeys(c.model.target for c in cells):
            mine = [c for c in cells if c.model.target == target]
            colds = self._cold_phase(mine, built, scorers)
            live = [c for c in mine if colds[c.cell_id].ok]
            for c in mine:
                if not colds[c.cell_id].ok:
                    self.write(self.row(c, "failed", **self.build_fields(c, built),
                                        error=f"cold start: {colds[c.cell_id].error}"))
            if not live:
                continue
            twins = self._timing_twins(live, built)
            timed = [c for c in live if c.cell_id not in twins]
            slices, loads, failed = self._rounds(target, timed, built, tqdm, "")
            self.add_time("accuracy (of cold start)", sum(r.accuracy_s or 0.0 for r in colds.values()))
            orphans = [c for c in live if twins.get(c.cell_id) in failed]
            if orphans:   # their reference's timing failed: they are timed themselves
                for c in orphans:
                    del twins[c.cell_id]
                more = self._rounds(target, orphans, built, tqdm, " (cells whose reference failed)")
                slices, loads, failed = {**slices, **more[0]}, {**loads, **more[1]}, {**failed, **more[2]}
                timed += orphans
            profiles = self._profile_phase(timed, built) if self.options.profile else {}
            for c in live:
                source = twins.get(c.cell_id, c.cell_id)
                row = self._final_row(c, built, colds, scorers, slices[source], loads[source], failed.get(source))
                if source != c.cell_id:
                    row["timing_from"] = source
                    if self.options.profile:
                        row["profile_note"] = f"not profiled: its speed figures are {source}'s (the same network)"
                if c.cell_id in profiles:
                    row.update(self._profile_fields(profiles[c.cell_id], row))
                self.write(row)
        return self.failed

    def _rounds(self, target: str, cells: list[Cell], built: dict[str, Built], tqdm, what: str):
        s = self.s
        spec = ServeSpec(target, s.threads, s.warmup, s.ov_int8_float,
                         [ServeCell(c.cell_id, built[c.model.model_id].artifact, c.scenario, c.model.batch,
                                    self.plan.pixels(c.model.batch)) for c in cells])
        t0 = time.monotonic()
        with tqdm(total=len(schedule([c.cell_id for c in cells], s.rounds, s.round_seconds, True)),
                  desc=f"rounds {target}{what}", unit="slice", dynamic_ncols=True) as bar:
            slices, loads, failed, load_s = time_target(spec, s.rounds, s.round_seconds, s.interleave,
                                                        self.options.timeout, self.work, self.logs, bar,
                                                        processes=s.processes)
        self.add_time("serving processes: start, load + warm-up", load_s)
        self.add_time("timed rounds", time.monotonic() - t0 - load_s)
        return slices, loads, failed

    def _timing_twins(self, live: list[Cell], built: dict[str, Built]) -> dict[str, str]:
        """cell_id -> the reference detector's cell whose rounds it takes: a detector with the
        reference's network (`same_network`), in the same target, precision, reducer, keep,
        batch and scenario, whose artifact does the same work on as many tokens. Timing it again
        would measure the same graph twice and add only noise (and minutes) to the comparison."""
        reference = self.s.reference_detector
        by_key = {(c.model.precision, c.model.reducer, c.model.keep, c.model.batch, c.scenario): c
                  for c in live if c.model.detector == reference}
        twins = {}
        for c in live:
            if c.model.detector not in self.plan.same_network:
                continue
            twin = by_key.get((c.model.precision, c.model.reducer, c.model.keep, c.model.batch, c.scenario))
            if twin is None:
                continue
            mine, theirs = built[c.model.model_id], built[twin.model.model_id]
            if (mine.flops, mine.tokens_kept, mine.tokens_total) == (theirs.flops, theirs.tokens_kept,
                                                                     theirs.tokens_total):
                twins[c.cell_id] = twin.cell_id
        return twins

    def _profile_phase(self, cells: list[Cell], built: dict[str, Built]) -> dict[str, ProfileResult]:
        """Each cell profiled in its own process once its target's rounds are over, so no
        profiler runs beside a timed window."""
        from tqdm import tqdm

        s, o = self.s, self.options
        t0 = time.monotonic()
        out = {}
        for c in tqdm(cells, desc="profile", unit="cell", dynamic_ncols=True):
            slug = c.cell_id.replace("/", "_")
            spec = ProfileSpec(c.cell_id, c.model.target, built[c.model.model_id].artifact, c.model.batch, s.threads,
                               self.plan.pixels(c.model.batch), s.ov_int8_float, o.profile_seconds,
                               str(self.out / "profiles" / f"{slug}.csv"))
            try:   # a profile that cannot run costs its own fields, never the measured row
                out[c.cell_id] = run_one("profile", spec, ProfileResult, self.work, self.logs, slug, o.timeout,
                                         s.threads)
            except Exception as err:  # noqa: BLE001
                out[c.cell_id] = ProfileResult(c.cell_id, False, error=f"{type(err).__name__}: {err}")
        self._tick("profiles (after the rounds)", t0)
        return out

    @staticmethod
    def _profile_fields(p: ProfileResult, row: dict) -> dict:
        if not p.ok:
            return {"profile_note": ("unavailable: " if p.unavailable else "profile failed: ") + (p.error or "")}
        p50 = row.get("latency_p50_ms")
        single = row.get("scenario") == "single-stream"
        return dict(profile_method=p.method, profile_calls=p.calls, profile_wall_ms=p.wall_ms,
                    profile_nodes_ms=p.nodes_ms, profile_stages=json.dumps(p.stages),
                    profile_vs_p50=round(p.nodes_ms / p50, 4) if single and p50 and p.nodes_ms else None,
                    profile_plain_ms=p.plain_ms,
                    profile_vs_plain=round(p.nodes_ms / p.plain_ms, 4) if p.plain_ms and p.nodes_ms else None,
                    profile_file=str(Path("profiles") / Path(p.cell_id.replace("/", "_") + ".csv")))

    @staticmethod
    def _scorers(cells: list[Cell]) -> dict[str, str]:
        """model_id -> the model_id whose outputs are scored for it. Artifacts that differ only
        in batch size compute the same outputs: float ones, dynamic int8, one artifact reshaped
        at load (OpenVINO's), and calibrated ones, whose recipes calibrate at a fixed batch of
        their own (targets.openvino_backend and quant.litert_recipe CALIB_BATCH: the same scales
        at every artifact batch). The largest batch (fastest to score) scores for all."""
        groups: dict[tuple, list] = {}
        for m in models_of(cells):
            groups.setdefault((m.target, m.precision, m.detector, m.reducer, m.keep), []).append(m)
        return {m.model_id: max(ms, key=lambda x: x.batch).model_id for ms in groups.values() for m in ms}

    def _cold_phase(self, cells: list[Cell], built: dict[str, Built], scorers: dict[str, str]) -> dict[str, ColdResult]:
        from tqdm import tqdm

        s, p = self.s, self.plan
        scoring: dict[str, str] = {}  # model_id -> the cell that scores it
        for c in cells:
            if scorers[c.model.model_id] == c.model.model_id:
                scoring.setdefault(c.model.model_id, c.cell_id)
        results = {}
        t0 = time.monotonic()
        with tqdm(cells, desc=f"cold start {cells[0].model.target}", unit="cell", dynamic_ncols=True) as bar:
            for c in bar:
                b = built[c.model.model_id]
                acc = None
                # a model whose classes are not the data set's still has BAViT's token figures
                # (foreground vs background): scored without mAP
                wanted = p.cat_ids is not None or b.scores_tokens
                if p.scoring_set and wanted and scoring.get(c.model.model_id) == c.cell_id:
                    acc = AccuracySpec(p.scoring_set, p.cat_ids, b.scores_tokens, p.box_frame,
                                       str(self.out / "detections" / f"{c.model.slug}.json"),
                                       self._accuracy_cache(c, b))
                    bar.set_description(f"cold start + accuracy {c.cell_id}")
                else:
                    bar.set_description(f"cold start {c.cell_id}")
                spec = ColdSpec(c.cell_id, c.model.target, b.artifact, c.scenario, c.model.batch, s.threads,
                                p.pixels(c.model.batch), s.ov_int8_float, acc)
                results[c.cell_id] = run_cold(spec, self.work, self.logs, c.slug, self.options.timeout, s.threads)
        self._tick("cold start + accuracy", t0)
        return results

    def _accuracy_cache(self, cell: Cell, built: Built) -> str | None:
        """Keyed on everything the scored outputs depend on: the artifact (its folder name is
        its content key), how it runs (float precision of OpenVINO int8), the scored images
        (the scoring set's folder name is its content key) and the scoring options."""
        from bench.worker import ACCURACY_FORMAT

        if not self.options.accuracy_cache:
            return None
        key = digest({"format": ACCURACY_FORMAT, "artifact": Path(built.artifact).name,
                      "ov_int8_float": self.s.ov_int8_float, "scoring_set": Path(self.plan.scoring_set).name,
                      "cat_ids": self.plan.cat_ids, "box_frame": self.plan.box_frame, "batch": cell.model.batch})
        return str(Path(self.options.accuracy_cache) / f"{key[:24]}.json")

    def build_fields(self, cell: Cell, built: dict[str, Built]) -> dict:
        from targets import get_target
        from targets.base import Artifact

        b = built[cell.model.model_id]
        art = Artifact.load(b.artifact)
        needs = get_target(cell.model.target).needs_calibration(cell.model.precision)
        return dict(recipe=art.recipe, recipe_settings=json.dumps(art.recipe_settings, sort_keys=True),
                    fp32_kept=art.fp32_kept, calibration=self.plan.calibration_note if needs else None,
                    ov_int8_float=self.s.ov_int8_float if (cell.model.target, cell.model.precision) == (
                        "openvino", "int8") else None,
                    convert_s=art.convert_s, artifact_bytes=art.size_bytes, artifact_cached=b.cached,
                    artifact=b.artifact, tokens_kept=b.tokens_kept, tokens_total=b.tokens_total,
                    reducer_mapping=b.mapping, ideal_speedup=b.ideal_speedup)

    def _final_row(self, cell: Cell, built: dict[str, Built], colds: dict[str, ColdResult], scorers: dict[str, str],
                   slices: list[list[Slice]], loads: list[float], error: str | None) -> dict:
        from bench.stats import summarise

        cold = colds[cell.cell_id]
        fields = self.build_fields(cell, built)
        fields.update(load_s=cold.load_s, first_inference_ms=cold.first_inference_ms, peak_rss_mib=cold.peak_rss_mib,
                      baseline_rss_mib=cold.baseline_rss_mib,
                      rss_increase_mib=cold.peak_rss_mib - cold.baseline_rss_mib, torch_imported=cold.torch_imported,
                      executed_precision=cold.executed_precision, runtime_details=cold.runtime_details, mode=cold.mode,
                      streams=cold.streams, requests=cold.requests, accuracy_note=self.plan.accuracy_note)
        fields.update(self._accuracy_fields(cell, built, colds, scorers))
        if error is None and all(slices):
            summary = summarise(slices, loads, self.s.threads, processes=len(process_rounds(self.s.rounds,
                                                                                          self.s.processes)),
                                single_stream=cell.scenario == SINGLE_STREAM)
            fields.update(asdict(summary))
            fields.update(self._work_fields(cell, built, summary.throughput_ips))
            return self.row(cell, "ok", **fields)
        return self.row(cell, "failed", error=error or "timing: no slices recorded", **fields)

    def _work_fields(self, cell: Cell, built: dict[str, Built], throughput_ips: float | None) -> dict:
        """Achieved ops/s from the model's analytic work and the measured throughput (not
        FLOPs / p50 latency: with requests in flight a request's latency spans others' work),
        against this precision's peak on this machine."""
        from bench.system import peak

        flops = built[cell.model.model_id].flops
        if not flops:
            return {}
        pk = peak(cell.model.precision, self.s.threads)
        out = dict(gflop_per_image=round(flops / 1e9, 4), peak_gops=pk.gops, peak_basis=pk.basis)
        if throughput_ips:
            achieved = flops / 1e9 * throughput_ips
            out.update(achieved_gops=round(achieved, 2),
                       peak_pct=round(100 * achieved / pk.gops, 2) if pk.gops else None)
        return out

    def _accuracy_fields(self, cell: Cell, built: dict[str, Built], colds: dict[str, ColdResult],
                         scorers: dict[str, str]) -> dict:
        if not self.plan.scoring_set:
            return {}
        scorer = scorers[cell.model.model_id]
        result = next((r for cid, r in colds.items() if cid.startswith(scorer + "/") and
                       (r.accuracy is not None or r.accuracy_note)), None)
        if result is None and self.plan.accuracy_note and not built[scorer].scores_tokens:
            return {}   # no mAP, and no token figures to score: the row's note says why
        if result is None:
            return {"accuracy_note": f"not scored: the cell scoring {scorer} did not run"}
        if result.accuracy is None:
            return {"accuracy_note": result.accuracy_note, "accuracy_from": scorer}
        acc = asdict(result.accuracy)
        reused = acc.pop("reused")
        slug = scorer.replace("/", "_")
        return {**acc, "accuracy_from": scorer, "accuracy_reused": reused,   # detections only where mAP was scored
                "detections_file": str(self.out / "detections" / f"{slug}.json") if self.plan.cat_ids is not None
                else None}


# -- python -m bench.measure BUNDLE --out RUN ------------------------------------------------------
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.measure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder written by python -m bench.export")
    p.add_argument("--out", required=True, help="run folder: results.jsonl (this machine's fingerprint in each row), "
                                                "detections/, logs/, and report.html where pandas is installed")
    p.add_argument("--profile", action="store_true",
                   help="after each target's rounds, profile every cell in its own process (per-node times)")
    p.add_argument("--profile-seconds", type=float, default=3.0, help="seconds of profiled calls per cell (default 3)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a cell's process is killed")
    p.add_argument("--resume", action="store_true", help="finish the run in --out: skip cells recorded ok/unavailable")
    p.add_argument("--force", action="store_true", help="start over in a used --out (its results are removed)")
    p.add_argument("--no-report", action="store_true", help="do not build report.csv/report.html")
    return p.parse_args(argv)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def measure(argv: list[str] | None = None) -> int:
    """A bundle measured on this machine. Every check (the options, the bundle's manifest
    and the checksum of every file in it, the run folder) comes before any cell runs."""
    from bench.system import fingerprint
    from targets import get_target

    args = _parse(argv)
    signal.signal(signal.SIGTERM, _terminate)

    def fail(message: str) -> int:
        print(f"bench.measure: error: {message}", file=sys.stderr)
        return 2

    for option, value in (("--profile-seconds", args.profile_seconds), ("--timeout", args.timeout)):
        if value <= 0:
            return fail(f"{option} must be > 0, got {value:g}")
    bundle = Path(args.bundle)
    try:
        manifest = read_bundle(bundle)
    except BundleError as err:
        return fail(str(err))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as err:
        return fail(f"--out {out}: not writable ({err.strerror or err})")
    record = out / "run.json"
    if has_rows(out) and not (args.resume or args.force):
        return fail(f"--out {out}: holds results.jsonl of an earlier run; pass --resume to finish it, --force to "
                    "start over, or choose another --out")
    if args.resume and not args.force and record.is_file():
        try:
            before = json.loads(record.read_text()).get("bundle_id")
        except ValueError:
            return fail(f"--resume: {record} is not valid JSON")
        if before != manifest.bundle_id:
            return fail(f"--resume: {record} measured bundle {before}, not {manifest.bundle_id}; choose another "
                        "--out, or pass --force to start over")
    if args.force:
        start_over(out)
    plan, built = resolved(bundle, manifest)
    cells = [bc.cell for bc in manifest.cells]
    record.write_text(json.dumps({"argv": sys.argv if argv is None else argv, "model": plan.settings.model,
                                  "settings": asdict(plan.settings), "settings_key": plan.settings.key,
                                  "cells": [c.cell_id for c in cells], "bundle": str(bundle.resolve()),
                                  "bundle_id": manifest.bundle_id, "built_on": plan.built_on}, indent=1))
    done = finished_cells(out) if args.resume and not args.force else set()
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    m = Measure(plan, MeasureOptions(args.profile, args.profile_seconds, args.timeout, str(out / "cache" / "accuracy")),
                out, run_id, fingerprint())
    ok_cells = []
    for bc in manifest.cells:
        c = bc.cell
        if c.cell_id in done:
            continue
        if bc.status != "built":
            m.write(m.row(c, bc.status, error=f"on the building machine: {bc.error}"))
            continue
        target = get_target(c.model.target)
        why = target.available() or target.runnable(c.model.precision)
        if why:   # this machine lacks the runtime, or the precision's units
            m.write(m.row(c, "unavailable", error=f"on this machine: {why}"))
        else:
            ok_cells.append(c)
    try:
        failed = m.run(ok_cells, built)
    finally:
        Children.kill_all()
    (out / "timing.json").write_text(json.dumps(m.timing, indent=1))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in m.timing.items()), file=sys.stderr)
    if not args.no_report:
        try:
            from reports.build import build, summary_text
        except ImportError as err:   # a device without pandas: the rows are what it sends back
            print(f"bench.measure: no report here ({err}); read {out} with python -m reports.build {out}",
                  file=sys.stderr)
        else:
            try:
                build(out)
                print(summary_text(out))
                print(f"\nreport: {out / 'report.html'}")
            except Exception as err:  # noqa: BLE001  the results are safe in results.jsonl
                print(f"bench.measure: report failed: {type(err).__name__}: {err}", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    try:
        sys.exit(measure())
    except KeyboardInterrupt:
        Children.kill_all()
        print("bench.measure: interrupted; finished cells are in results.jsonl (rerun with --resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
