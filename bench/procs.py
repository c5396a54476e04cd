"""The harness's worker processes, from the parent's side: spawning `python -m bench.worker
MODE` in its own session (a timeout or Ctrl-C takes its children down with it), one cell's
process and its result, and a target's serving process driven through the timed rounds.
Imports no torch: the measuring side (bench.measure) runs on a device with a runtime alone."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.contracts import ColdResult, ColdSpec, Command, Reply, ServeSpec, Slice, from_json, to_json

ROOT = Path(__file__).resolve().parents[1]


def worker_env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                OPENBLAS_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def spawn(args: list[str], log: Path, threads: int, **kw) -> subprocess.Popen:
    """A worker in a new session, so a timeout or Ctrl-C kills it with its children."""
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "bench.worker", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=worker_env(threads), start_new_session=True, **kw)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class Children:
    """Every live worker, so Ctrl-C / SIGTERM takes them all down with the harness."""
    live: set[subprocess.Popen] = set()

    @classmethod
    def kill_all(cls) -> None:
        for proc in list(cls.live):
            kill(proc)
        cls.live.clear()


def run_one(mode: str, spec, result_cls: type, work: Path, logs: Path, slug: str, timeout: float, threads: int):
    """A cell's own `bench.worker MODE` process; its result, or one saying why there is none."""
    spec_file, out_file = work / f"{slug}.{mode}.json", work / f"{slug}.{mode}.out.json"
    spec_file.write_text(to_json(spec))
    out_file.unlink(missing_ok=True)
    proc = spawn([mode, str(spec_file), str(out_file)], logs / f"{slug}.{mode}.log", threads)
    Children.live.add(proc)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        return result_cls(spec.cell_id, False, error=f"timeout: the cell's process did not finish in {timeout:g} s")
    finally:
        Children.live.discard(proc)
    if out_file.is_file():
        try:
            return from_json(result_cls, out_file.read_text())
        except (ValueError, TypeError) as err:   # a result cut short (disk full, killed mid-write)
            return result_cls(spec.cell_id, False, error=f"unreadable result of the cell's process: {err}")
    return result_cls(spec.cell_id, False, error=f"the cell's process died (exit code {proc.returncode}); "
                                                 f"see logs/{slug}.{mode}.log")


def run_cold(spec: ColdSpec, work: Path, logs: Path, slug: str, timeout: float, threads: int) -> ColdResult:
    return run_one("cold", spec, ColdResult, work, logs, slug, timeout, threads)


def runnable_others() -> float:
    """Runnable tasks on the machine now, this sampling process excluded (/proc/loadavg's
    4th field counts the reader)."""
    try:
        with open("/proc/loadavg") as f:
            return max(0, int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return 0


class Server:
    """The parent's end of one serving process."""

    def __init__(self, spec: ServeSpec, work: Path, logs: Path, timeout: float) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        spec_file = work / f"serve-{spec.target}.json"
        spec_file.write_text(to_json(spec))
        self.proc = spawn(["serve", str(spec_file), str(cmd_r), str(reply_w)], logs / f"serve-{spec.target}.log",
                           spec.threads, pass_fds=(cmd_r, reply_w))
        Children.live.add(self.proc)
        os.close(cmd_r)
        os.close(reply_w)
        self._buf = b""
        self.timeout = timeout
        self.log = f"logs/serve-{spec.target}.log"

    def _reply(self, timeout: float, loads: list[int] | None = None) -> Reply:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timeout: the serving process did not answer in {timeout:g} s")
            ready, _, _ = select.select([self._reply_r], [], [], min(left, 0.05))
            if not ready:
                if loads is not None:
                    loads.append(runnable_others())
                continue
            chunk = os.read(self._reply_r, 1 << 20)
            if not chunk:
                code = self.proc.wait()
                raise RuntimeError(f"the serving process died (exit code {code}); see {self.log}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return from_json(Reply, line.decode())

    def ready(self) -> dict[str, str]:
        return self._reply(self.timeout).failed_cells

    def measure(self, cell_id: str, seconds: float) -> tuple[Reply, float]:
        os.write(self._cmd_w, (to_json(Command(cell_id, seconds)) + "\n").encode())
        loads: list[int] = []
        reply = self._reply(seconds * 4 + 60, loads)
        return reply, (sum(loads) / len(loads) if loads else 0.0)

    def close(self) -> None:
        try:
            os.write(self._cmd_w, (to_json(Command(None)) + "\n").encode())
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        kill(self.proc)
        Children.live.discard(self.proc)
        for fd in (self._cmd_w, self._reply_r):
            try:
                os.close(fd)
            except OSError:
                pass


def schedule(cell_ids: list[str], rounds: int, seconds: float, interleave: bool) -> list[tuple[int, str, float]]:
    """(round, cell, seconds) in timing order. Interleaved: each round runs every cell twice,
    forwards then backwards, half the time each: all cells' timed windows share one centre
    per round, so a linear drift of the machine's speed cancels out of every ratio. Not
    interleaved: each cell's rounds back to back (what a one-pass sweep does)."""
    half = seconds / 2
    if interleave:
        return [(r, c, half) for r in range(rounds) for c in cell_ids + cell_ids[::-1]]
    return [(r, c, half) for c in cell_ids for r in range(rounds) for _ in range(2)]


def process_rounds(rounds: int, processes: int) -> list[range]:
    """The rounds each serving process times, in order, as evenly as they divide: 5 rounds
    over 2 processes are rounds 0-2 and 3-4; more processes than rounds are one per round."""
    processes = max(1, min(processes, rounds))   # never a process with no round to time
    base, extra = divmod(rounds, processes)
    out, first = [], 0
    for p in range(processes):
        n = base + (p < extra)
        out.append(range(first, first + n))
        first += n
    return out


def time_target(spec: ServeSpec, rounds: int, round_seconds: float, interleave: bool, timeout: float, work: Path,
                logs: Path, bar, processes: int = 1
                ) -> tuple[dict[str, list[list[Slice]]], dict[str, list[float]], dict[str, str], float]:
    """All timed rounds of one target's cells, spread over `processes` fresh serving processes
    one after another (each loads and warms up every cell, then times its share of the rounds,
    interleaved): slices per cell per round, the load figure of each slice, the cells that
    failed (why), and the seconds the processes' loading + warm-up took. A cell that fails in
    one process is failed; the others go on in the next."""
    ids = [c.cell_id for c in spec.cells]
    slices: dict[str, list[list[Slice]]] = {c: [[] for _ in range(rounds)] for c in ids}
    loads: dict[str, list[float]] = {c: [] for c in ids}
    failed: dict[str, str] = {}
    load_s = 0.0
    shares = process_rounds(rounds, processes)
    for p, share in enumerate(shares):
        live = [c for c in ids if c not in failed]
        if not live:
            break
        plan = [(share[r], c, sec) for r, c, sec in schedule(live, len(share), round_seconds, interleave)]
        which = f" process {p + 1}/{len(shares)}" if len(shares) > 1 else ""
        start = time.monotonic()
        bar.set_description(f"rounds {spec.target}{which} [load + warm-up]")
        server = Server(replace(spec, cells=[c for c in spec.cells if c.cell_id in live]), work, logs, timeout)
        try:
            failed.update(server.ready())
            load_s += time.monotonic() - start
            for rnd, cell_id, seconds in plan:
                bar.update(1)
                if cell_id in failed:
                    continue
                bar.set_description(f"rounds {spec.target}{which} r{rnd + 1}/{rounds} {cell_id}")
                reply, load = server.measure(cell_id, seconds)
                if not reply.ok:
                    failed[cell_id] = f"timing: {reply.error}"
                    continue
                slices[cell_id][rnd].append(reply.slice)
                loads[cell_id].append(load)
        except RuntimeError as err:  # the process died or hung: its unfinished cells fail
            for c in live:
                if c not in failed and any(len(slices[c][r]) < 2 for r in share):
                    failed[c] = f"timing: {err}"
        finally:
            server.close()
    return slices, loads, failed, load_s
