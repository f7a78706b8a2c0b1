"""The bench's own virtualenv (dlt, pyarrow, matplotlib), made from bench/requirements.txt on first use.

It lives in bench/work/.venv-bench so the pipeline's pinned set (constraints.txt) never sees these packages.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REQUIREMENTS = BENCH_DIR / "requirements.txt"
CONSTRAINTS = BENCH_DIR / "constraints.txt"


def _fingerprint() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()


def ensure(venv_dir: Path, echo=print) -> tuple[Path | None, str]:
    """(python of the bench venv, "") when it is ready, else (None, why it could not be made)."""
    python = venv_dir / "bin" / "python"
    marker = venv_dir / ".installed"
    if marker.exists() and marker.read_text() == _fingerprint() and python.exists():
        return python, ""
    echo(f"  installing the bench virtualenv {venv_dir} from {REQUIREMENTS.name} (once) …")
    base = getattr(sys, "_base_executable", sys.executable)
    commands = [
        [base, "-m", "venv", str(venv_dir)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(REQUIREMENTS), "-c", str(CONSTRAINTS)],
    ]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"`{' '.join(command[:4])} …` failed: " + " | ".join(why)
    marker.write_text(_fingerprint())
    return python, ""
