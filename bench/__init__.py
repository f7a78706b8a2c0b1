"""Sluice's benchmark harness: `python -m bench --help` (or `make bench`). See bench/README.md."""

import sys
from pathlib import Path

# The pipeline package lives in plugins/ (Airflow's layout); `make bench` puts it on PYTHONPATH, and this
# lets a bare `python -m bench` from the repository root work too.
_PLUGINS = str(Path(__file__).resolve().parents[1] / "plugins")
if _PLUGINS not in sys.path:
    sys.path.insert(0, _PLUGINS)
