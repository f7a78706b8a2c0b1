"""README's Layout section names every folder and module of the tree, and nothing that is not there."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LISTED_MODULES = ("plugins/sluice", "webapp", "devtools/sluice_devtools")


def layout_paths() -> set[str]:
    """The paths the Layout block names: top-level entries, and indented modules under the folder above them."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Layout\n.*?^```\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)[1]
    paths, folder = set(), ""
    for line in block.splitlines():
        name = re.split(r"\s{2,}", line.strip())[0]
        if line.startswith("  "):
            paths.add(f"{folder}{name}")
            continue
        for entry in name.split(", "):
            paths.add(entry.rstrip("/"))
        folder = name if name.endswith("/") else ""
    return paths


def tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def test_every_path_the_layout_names_exists():
    missing = sorted(path for path in layout_paths() if not (REPO / path).exists())
    assert not missing, f"README Layout names paths that are not in the tree: {missing}"


def test_every_module_and_top_level_entry_is_in_the_layout():
    listed = layout_paths()
    files = tracked()
    modules = {f for f in files if f.endswith(".py") and f.rsplit("/", 1)[0] in LISTED_MODULES}
    sql = {f for f in files if f.startswith("sql/") and f.count("/") == 1}
    top = {f.split("/")[0] for f in files if not f.startswith(".") or f.startswith(".ci/")} - {"README.md"}
    unlisted = sorted((modules | sql | top) - listed
                      - {name for name in top if any(p.startswith(f"{name}/") for p in listed)})
    assert not unlisted, f"README Layout does not name: {unlisted}"
