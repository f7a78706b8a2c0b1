"""The Prometheus alert rules (ops/prometheus/rules.yml): valid, and each alert firing and not firing as
ops/prometheus/rules_test.yml expects, with Debian's promtool (make test installs it; missing, these fail)."""

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[1] / "ops" / "prometheus"


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: make tools installs Debian's prometheus package (as root)"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_rules_are_valid_and_fire_exactly_as_their_unit_tests_expect():
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = promtool("test", "rules", "rules_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("threshold, changed", [("> 0.05", "> 0.07"), ("> 0.25", "> 0.5"), ("for: 10m", "for: 1m")],
                         ids=["reject rate", "p99 latency", "staleness pending"])
def test_the_unit_tests_catch_a_changed_threshold(tmp_path, threshold, changed):
    rules = (RULES / "rules.yml").read_text()
    assert threshold in rules
    (tmp_path / "rules.yml").write_text(rules.replace(threshold, changed, 1))
    shutil.copy(RULES / "rules_test.yml", tmp_path)
    tested = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert tested.returncode != 0 and "FAILED" in tested.stdout + tested.stderr
