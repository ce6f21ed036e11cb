#!/usr/bin/env python3
"""Renders the benchmark plots in docs/img/ from the tables of docs/benchmarks.md.

The plots are drawn from the recorded tables themselves, so a plot never shows a figure the
document does not. Run from anywhere:  python3 scripts/plot_benchmarks.py
(matplotlib is installed into a private venv under ~/.cache/pricefeed/plot-venv when missing).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "docs" / "img"


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pricefeed"
        venv = cache / "plot-venv"
        py = venv / "bin" / "python"
        if not py.exists():
            subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
            subprocess.check_call([str(py), "-m", "pip", "install", "-q", "matplotlib"])
        os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def section(text, heading):
    """The text under the first heading that starts with `heading`, up to the next heading of
    the same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s+(.*)", line)
        if m and m.group(2).startswith(heading):
            level = len(m.group(1))
            out = []
            for rest in lines[i + 1:]:
                m2 = re.match(r"^(#+)\s", rest)
                if m2 and len(m2.group(1)) <= level:
                    break
                out.append(rest)
            return "\n".join(out)
    raise SystemExit(f"docs/benchmarks.md has no heading starting with {heading!r}")


def rows(text):
    """Cells of the body rows of every markdown table in `text` (header rows skipped)."""
    lines = [l.strip() for l in text.splitlines()]
    for i, line in enumerate(lines):
        if not line.startswith("|") or re.match(r"^\|[-| :]+\|$", line):
            continue
        if i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1]):
            continue  # a header
        yield [c.strip() for c in line.strip("|").split("|")]


def numbers(cell):
    """Every number in a cell, with thin or plain spaces as thousands separators."""
    cell = cell.replace("\u202f", " ").replace("\u2009", " ")
    return [float(n.replace(" ", "")) for n in re.findall(r"\d{1,3}(?: \d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", cell)]


def plot_e2e(plt, text):
    sec = section(text, "Simulator → WS → one node → Redis")
    # The table of the current code (earlier tables in the section are history).
    sec = sec.split("**Current code**", 1)[-1]
    sec = sec[: sec.find("\n\n", sec.find("|"))]
    xs, ys = [], []
    for r in rows(sec):
        if len(r) < 6 or not numbers(r[0]) or "µs" not in r[5]:
            continue
        per_trade = numbers(r[5])
        xs.append(numbers(r[1])[0] / 1000)
        ys.append(sum(per_trade) / len(per_trade))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(xs, ys, "o-", label="node CPU per accepted trade (mean of runs)")
    ax.axhline(0.6, color="tab:red", ls="--", label="target 0.6 µs")
    ax.set_xlabel("accepted trades/s (thousands)")
    ax.set_ylabel("µs of CPU per trade")
    ax.set_ylim(0, max(ys + [0.6]) * 1.3)
    ax.set_title("Ingest cost per trade, one node (e2e)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_prices(plt, text):
    sec = section(text, "Latest-price API")
    runs, bare, owner, other = [], [], [], []
    for r in rows(sec):
        if len(r) < 4 or not numbers(r[1]) or not numbers(r[2]):
            continue
        runs.append(r[0])
        bare.append(numbers(r[1])[0] / 1000)
        owner.append(numbers(r[2])[0] / 1000)
        other.append(numbers(r[3])[0] / 1000)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    w = 0.27
    idx = range(len(runs))
    ax.bar([i - w for i in idx], bare, w, label="bare axum handler")
    ax.bar(list(idx), owner, w, label="node, owner")
    ax.bar([i + w for i in idx], other, w, label="node, other")
    ax.set_xticks(list(idx), runs, fontsize=8)
    ax.set_xlabel("run (docs/benchmarks.md)")
    ax.set_ylabel("k requests/s")
    ax.set_title("GET /api/v1/prices/BTCUSDT under wrk")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_fanout(plt, text):
    sec = section(text, "Client WebSocket fan-out")
    pts = []
    for r in rows(sec):
        if len(r) < 5 or "/" not in r[4] or not numbers(r[1]):
            continue
        lat = numbers(r[4])
        pts.append((numbers(r[1])[0], lat[0], lat[1], lat[2], r[0]))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for j, name in ((1, "p50"), (2, "p90"), (3, "p99")):
        ax.scatter([p[0] for p in pts], [p[j] for p in pts], label=name)
    ax.axhline(200, color="tab:red", ls="--", label="target p99 200 ms")
    ax.set_xlabel("client connections on one node")
    ax.set_ylabel("trade → client latency, ms")
    ax.set_title("WebSocket fan-out latency (loopback, 2 cores)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def main():
    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "pricefeed"  # stable ids: re-rendering unchanged data is a no-op
    plt.rcParams["svg.fonttype"] = "none"
    text = DOC.read_text()
    OUT.mkdir(exist_ok=True)
    for name, fn in (("bench-e2e", plot_e2e), ("bench-prices", plot_prices), ("bench-fanout", plot_fanout)):
        fig = fn(plt, text)
        fig.tight_layout()
        path = OUT / f"{name}.svg"
        fig.savefig(path, metadata={"Date": None})
        plt.close(fig)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
