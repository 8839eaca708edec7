"""The report's document: blocks rendered to Markdown and to self-contained HTML, the cells' formatting, and the
atomic writes of both files.

A report is a list of blocks: ``("h1"|"h2"|"p", text)``, ``("table", head, rows)`` (cells are strings) and
``("img", path, caption)``. Both formats render from the one list, so they never disagree.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from rlprune.io import atomic_write_bytes


def figure_dir(out: Path) -> Path:
    """``out/figures``, created, with matplotlib set to draw without a display (servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    return figdir


def publish(out: Path, blocks: list[tuple], title: str, figs: dict) -> dict:
    """Write ``report.md`` and ``report.html`` of ``blocks`` into ``out``, each through an atomic rename.

    Returns:
        ``{"report_md", "report_html", "figures"}`` paths (``figures`` from ``figs``' values).
    """
    atomic_write_bytes(out / "report.md", render_markdown(blocks).encode())
    atomic_write_bytes(out / "report.html", render_html(blocks, title).encode())
    return {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
            "figures": [str(p) for p in figs.values()]}


def stage_blocks(stage_wall: dict) -> list[tuple]:
    """The closing "Stages" section: each stage's measured wall time."""
    return [("h2", "Stages"), ("table", ["stage", "wall s"], [[s, f"{w:.1f}"] for s, w in stage_wall.items()])]


def stage_times(out: Path) -> dict:
    """Stage name -> measured wall seconds, from the run's stage markers in finishing order."""
    times = {}
    for p in sorted((out / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            times[p.stem] = float(json.loads(p.read_text())["wall_s"])
        except (OSError, ValueError, KeyError):
            continue
    return times


def fmt(v, digits=2) -> str:
    """A number cell: ``n/a`` for None or non-finite, ``digits`` decimals for floats."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def num(v):
    """``float(v)``, None kept."""
    return None if v is None else float(v)


def plural(n: int, word: str) -> str:
    """``"1 search"``, ``"2 searches"``."""
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("h") else "s")


def ci_cell(row: dict) -> str:
    """A row's 95% interval of its test score as ``lo-hi``."""
    ci = row.get("acc_ci")
    return f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "n/a (one number per split)"


def count(v) -> str:
    """A counter cell (empty where a row does not count)."""
    return "" if v is None else str(int(v))


def render_markdown(blocks) -> str:
    """The blocks as Markdown; images link to ``figures/<name>``."""
    lines = []
    for kind, *rest in blocks:
        if kind == "h1":
            lines += [f"# {rest[0]}", ""]
        elif kind == "h2":
            lines += [f"## {rest[0]}", ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "table":
            head, body = rest
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in body] + [""]
        elif kind == "img":
            lines += [f"![{rest[1]}](figures/{Path(rest[0]).name})", ""]
    return "\n".join(lines)


def inline(text: str) -> str:
    """Markdown's **bold** and `code` in an HTML-escaped paragraph."""
    out, parts = [], html.escape(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bits = part.split("**")
            out.append("".join(f"<b>{x}</b>" if j % 2 else x for j, x in enumerate(bits)))
    return "".join(out)


def render_html(blocks, title: str) -> str:
    """The blocks as one HTML page, figures embedded as base64 PNGs."""
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "table":
            head, rows = rest
            th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><tr>{th}</tr>{trs}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(rest[0]).read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(rest[1])}">'
                        f"<figcaption>{html.escape(rest[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figcaption{color:#555;font-size:90%}code{background:#f3f3f3;padding:0 3px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
