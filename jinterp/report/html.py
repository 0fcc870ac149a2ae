"""A self-contained HTML report: one section per method (figures embedded as base64 PNG, metric tables next to
their baselines), a header with versions, config, seed, device and timings. No external assets, so the file can be
mailed, archived or opened offline.

    sections = [Section("ClaDec", intro="...", tables=[Table("...", ["metric", "ClaDec", "RefAE"], rows)],
                        figures=[Figure(path, "Original | RefAE | ClaDec")])]
    write_report("runs/demo/report.html", "jinterp demo", header={"jax": "0.10.2", ...}, sections=sections)
"""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Mapping, Sequence
from pathlib import Path


@dataclasses.dataclass
class Table:
    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence]


@dataclasses.dataclass
class Figure:
    path: str | Path
    caption: str = ""


@dataclasses.dataclass
class Section:
    """``status``: ``ok``, ``skipped`` (with ``reason``: e.g. the data has no part annotations) or ``failed``."""

    title: str
    intro: str = ""
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    status: str = "ok"
    reason: str = ""
    seconds: float | None = None


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 3px solid #3367d6; padding-bottom: .3em; }
h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #eef2fb; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 4px; }
figure { display: inline-block; margin: .6em 1.2em .6em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; max-width: 520px; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; margin-left: .6em;
          vertical-align: middle; color: white; }
.ok { background: #2e7d32; } .skipped { background: #9e9e9e; } .failed { background: #c62828; }
.meta td { text-align: left; } .note { color: #555; font-size: 14px; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3g}"
    return html.escape(str(v))


def _table(t: Table, cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in t.rows)
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><caption>{html.escape(t.caption)}</caption><tr>{head}</tr>{body}</table>"


def _img(path: str | Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def render(title: str, header: Mapping[str, object], sections: Sequence[Section],
           config: Mapping | None = None) -> str:
    """The whole report as one HTML string (figures inlined; a missing figure file is noted, not fatal)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append(_table(Table("Run", ["", ""], [(k, v) for k, v in header.items()]), "meta"))
    summary = [(s.title, s.status + (f": {s.reason}" if s.reason else ""),
                "–" if s.seconds is None else f"{s.seconds:.0f} s") for s in sections]
    parts.append(_table(Table("Methods", ["method", "status", "time"], summary)))
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}<span class='status {html.escape(s.status)}'>"
                     f"{html.escape(s.status)}</span></h2>")
        if s.reason:
            parts.append(f"<p class='note'>{html.escape(s.reason)}</p>")
        if s.intro:
            parts.append(f"<p>{html.escape(s.intro)}</p>")
        for t in s.tables:
            parts.append(_table(t))
        for f in s.figures:
            if Path(f.path).is_file():
                parts.append(f"<figure>{_img(f.path)}<figcaption>{html.escape(f.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p class='note'>(figure missing: {html.escape(Path(f.path).name)})</p>")
        for n in s.notes:
            parts.append(f"<p class='note'>{html.escape(n)}</p>")
    if config:
        import json

        parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=2, default=str))
                     + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, header: Mapping[str, object], sections: Sequence[Section],
                 config: Mapping | None = None) -> Path:
    """Renders and writes the report atomically (temporary file + rename); returns the path."""
    from jinterp.core.run import write_file

    text = render(title, header, sections, config)
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))  # process 0 writes
