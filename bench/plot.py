"""Plot stage times: matplotlib when present (the bench virtualenv), else a plain PNG written with the stdlib.

Standalone so the bench venv can run it: python bench/plot.py DATA_JSON OUT_PNG. DATA_JSON holds
{"title": str, "passes": {pass: {stage: seconds}}, "loads": {load: seconds}}.
"""

import json
import struct
import sys
import zlib

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def with_matplotlib(data: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes, loads = data["passes"], data["loads"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 1]})
    stages = list(dict.fromkeys(stage for times in passes.values() for stage in times))
    names = list(passes)[::-1]
    offsets = [0.0] * len(names)
    for index, stage in enumerate(stages):
        widths = [passes[name].get(stage, 0.0) for name in names]
        left.barh(names, widths, left=offsets, color=COLORS[index % len(COLORS)], label=stage)
        offsets = [o + w for o, w in zip(offsets, widths, strict=True)]
    for y, total in enumerate(offsets):
        left.text(total, y, f" {total:.1f} s", va="center", fontsize=9)
    left.set_xlabel("seconds")
    left.set_title("Sluice stages, CSV source")
    left.legend(loc="lower right", fontsize=8)
    left.set_xlim(0, max(offsets) * 1.2)
    labels = list(loads)[::-1]
    values = [loads[label] for label in labels]
    right.barh(labels, values, color=["#55a868" if label.startswith("Sluice") else "#8c8c8c" for label in labels])
    for y, value in enumerate(values):
        right.text(value, y, f" {value:.1f} s", va="center", fontsize=9)
    right.set_xscale("log")
    right.set_xlim(min(values) / 2, max(values) * 4)
    right.set_xlabel("seconds (log scale)")
    right.set_title("Loading the same rows")
    figure.suptitle(data["title"])
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def plain_png(data: dict, out: str, width: int = 900, height: int = 420) -> None:
    """Bars only (no text): stacked stage times per pass on top, the loads below; colours as in COLORS."""
    pixels = bytearray(b"\xff" * width * height * 3)

    def rect(x0, y0, x1, y1, color):
        rgb = bytes.fromhex(color[1:])
        for y in range(max(0, y0), min(height, y1)):
            row = y * width * 3
            pixels[row + x0 * 3: row + x1 * 3] = rgb * (x1 - x0)

    passes, loads = data["passes"], data["loads"]
    longest = max([sum(times.values()) for times in passes.values()] + list(loads.values()))
    scale = (width - 40) / longest
    y = 20
    for times in passes.values():
        x = 20
        for index, seconds in enumerate(times.values()):
            w = max(1, round(seconds * scale))
            rect(x, y, x + w, y + 30, COLORS[index % len(COLORS)])
            x += w
        y += 40
    y += 20
    for label, seconds in loads.items():
        rect(20, y, 20 + max(1, round(seconds * scale)), y + 20, "#55a868" if label.startswith("Sluice") else "#8c8c8c")
        y += 28
    raw = b"".join(b"\x00" + bytes(pixels[r * width * 3:(r + 1) * width * 3]) for r in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    with open(out, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def draw(data: dict, out: str) -> str:
    """Draw with matplotlib if importable, else the plain PNG; returns which one was used."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plain_png(data, out)
        return "plain"
    with_matplotlib(data, out)
    return "matplotlib"


if __name__ == "__main__":
    data_path, out_path = sys.argv[1:]
    with open(data_path) as file:
        print(draw(json.load(file), out_path))
