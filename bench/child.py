"""Each measured step runs in a fresh child process, so its peak RSS is its own.

Parent: `Children(log_dir).run(step, args)` runs the named step function in a new process forked from a
multiprocessing fork server that has only imported the step modules (no data, no connections), so a child
starts in milliseconds instead of re-importing psycopg, marshmallow and sluice. The step times only the
call being measured (not the start, imports or connecting) and the child writes {"seconds",
"peak_rss_mb", "result"} as JSON. The peak is VmHWM from /proc/self/status: the high-water mark of the
child's own address space, which starts at the fork server's size (the imported modules, ~30 MB).
`run_command` does the same for a program in another interpreter (the dlt baselines).
"""

import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# step name -> module holding a function of that name; the fork server imports these modules once
STEP_MODULES = {
    **{name: "bench.steps" for name in
       ("apply_schema", "ingest", "store_raw", "normalize", "upsert", "checkpoint", "record_run")},
    **{name: "bench.baselines" for name in ("copy_csv", "naive_executemany", "hook_insert_rows")},
}


class StepFailed(RuntimeError):
    def __init__(self, message: str, log_path: Path):
        super().__init__(message)
        self.log_path = log_path


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


class Measure:
    """Times the one call a step is about, and each SQL statement in it; a step calls it exactly once."""

    seconds: float | None = None

    def __init__(self):
        self.statements: list[tuple[str, float]] = []

    def __call__(self, function):
        from bench import statements

        with statements.timed(self.statements):
            start = time.perf_counter()
            result = function()
            self.seconds = time.perf_counter() - start
        return result


def child_env(extra: dict | None = None) -> dict:
    return {**os.environ, **(extra or {})}


class Children:
    def __init__(self, log_dir: Path, echo=print):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.echo = echo
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(sorted(set(STEP_MODULES.values())))

    def _paths(self, label: str) -> tuple[Path, Path]:
        self.count += 1
        stem = f"{self.count:03d}-{label.replace(' ', '_')}"
        return self.log_dir / f"{stem}.json", self.log_dir / f"{stem}.log"

    def run(self, step: str, args: dict, *, env: dict | None = None, label: str | None = None,
            quiet: bool = False) -> dict:
        """Run a step function of STEP_MODULES in a child forked from the fork server."""
        label = label or step
        result_path, log_path = self._paths(label)
        process = self._context.Process(target=_run_step, args=(step, args, str(result_path), str(log_path), env))
        process.start()
        process.join()
        return self._collect(label, process.exitcode, result_path, log_path, quiet=quiet)

    def run_command(self, command: list[str], label: str, *, env: dict | None = None) -> dict:
        """Run a program that writes its measurement as JSON to the path given as its last argument."""
        result_path, log_path = self._paths(label)
        with open(log_path, "wb") as log:
            completed = subprocess.run([*command, str(result_path)], cwd=REPO, env=child_env(env),
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self._collect(label, completed.returncode, result_path, log_path)

    def _collect(self, label: str, exit_code: int | None, result_path: Path, log_path: Path,
                 quiet: bool = False) -> dict:
        if exit_code != 0 or not result_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            raise StepFailed(f"{label}: child exited with {exit_code}; last lines of {log_path}:\n" + "\n".join(tail),
                             log_path)
        measured = json.loads(result_path.read_text())
        if not quiet:
            self.echo(f"  {label:<34} {measured['seconds']:8.2f} s  peak RSS {measured['peak_rss_mb']:6.0f} MB")
        return measured


def _run_step(step: str, args: dict, result_path: str, log_path: str, env: dict | None) -> None:
    """The child: output to the step's log, run the step, write its measurement."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(env or {})
    function = getattr(importlib.import_module(STEP_MODULES[step]), step)
    measure = Measure()
    result = function(measure, **args)
    if measure.seconds is None:
        raise RuntimeError(f"step {step} did not measure anything")
    Path(result_path).write_text(json.dumps(
        {"seconds": measure.seconds, "peak_rss_mb": peak_rss_mb(), "result": result,
         "statements": measure.statements}, default=str))
