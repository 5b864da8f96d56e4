"""HTML pages of the paper's tables for the Snakemake report, from the Markdown that ``report.tables`` writes.

    python -m vqinsight.report html --tables results/demo/tables --out-dir results/demo/tables/html

One standalone page per ``table*.md`` (title, metric legend, the table with its "measured (this run)" rows above
the "reported in the paper (not rerun)" rows, notes) and ``index.html``, a results page with every table on it.
Only presentation: the numbers, their formatting and the bold marks are the Markdown's, so the HTML, Markdown,
LaTeX and CSV versions of a table cannot disagree.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

from vqinsight.provenance import atomic_write_text

log = logging.getLogger("vqinsight.report.html")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; } td.num, th.num { text-align: right; }
tr.block th { text-align: left; font-style: italic; font-weight: normal; background: #e8eef7; }
tr.reported td { color: #555; } p.meta { color: #555; font-size: 0.9em; }
"""


def _inline(text: str) -> str:
    """Markdown inline marks used by the tables (**bold**, *italic*, `code`, [text](link)) on escaped text."""
    s = html.escape(text.replace("\\|", "|"), quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", s)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', s)


def _cells(line: str) -> list[str]:
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _table(lines: list[str]) -> str:
    head = _cells(lines[0])
    out = ["<table>", "<thead><tr>"]
    out += [f"<th{' class=num' if i else ''}>{_inline(c)}</th>" for i, c in enumerate(head)]
    out.append("</tr></thead><tbody>")
    block = ""
    for line in lines[2:]:
        cells = _cells(line)
        label = cells[0]
        if all(not c for c in cells[1:]) and re.fullmatch(r"\*[^*].*\*", label):  # a block heading row
            block = "reported" if "reported" in label else "measured"
            out.append(f'<tr class="block"><th colspan="{len(head)}">{_inline(label)}</th></tr>')
            continue
        tds = [f"<td>{_inline(label)}</td>"] + [f'<td class="num">{_inline(c)}</td>' for c in cells[1:]]
        out.append(f'<tr class="{block}">' + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def markdown_to_html(md: str) -> tuple[str, str]:
    """(title, HTML body) of a table Markdown page: headings, paragraphs, one pipe table, bullet lists."""
    lines = md.splitlines()
    parts: list[str] = []
    title = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            text = line.lstrip("#").strip()
            title = title or text
            parts.append(f"<h{min(level, 3)}>{_inline(text)}</h{min(level, 3)}>")
            i += 1
        elif line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            parts.append(_table(lines[i:j]))
            i = j
        elif line.lstrip().startswith("- "):
            j = i
            items = []
            while j < len(lines) and lines[j].lstrip().startswith("- "):
                items.append(f"<li>{_inline(lines[j].lstrip()[2:])}</li>")
                j += 1
            parts.append("<ul>" + "".join(items) + "</ul>")
            i = j
        elif line.strip():
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].lstrip().startswith(("|", "#", "- ")):
                j += 1
            parts.append("<p>" + _inline(" ".join(x.strip() for x in lines[i:j])) + "</p>")
            i = j
        else:
            i += 1
    return title, "\n".join(parts)


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _order(p: Path) -> tuple[int, str]:
    return (len(p.stem), p.stem)


def write_html(tables_dir: str | Path, out_dir: str | Path, tables: list[str] | None = None) -> list[Path]:
    """``<out_dir>/<table>.html`` for each ``<tables_dir>/<table>.md`` (``tables``: those stems, else all) and
    ``index.html`` with all of them; returns the written paths."""
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    mds = [tables_dir / f"{t}.md" for t in tables] if tables else sorted(tables_dir.glob("table*.md"), key=_order)
    written, sections, toc = [], [], []
    for md in mds:
        if not md.is_file():
            raise FileNotFoundError(f"{md}: table Markdown not found (python -m vqinsight.report tables writes it)")
        title, body = markdown_to_html(md.read_text(encoding="utf-8"))
        out = out_dir / f"{md.stem}.html"
        atomic_write_text(out, page(title or md.stem, body))
        written.append(out)
        toc.append(f'<li><a href="#{md.stem}">{_inline(title or md.stem)}</a></li>')
        sections.append(
            f'<section id="{md.stem}">\n{body.replace("<h1>", "<h2>").replace("</h1>", "</h2>")}</section>'
        )
    intro = (
        "<h1>Results</h1><p class=meta>The paper's tables as computed by this run: in each table the rows "
        "<i>measured (this run)</i> come first, then the rows <i>reported in the paper (not rerun)</i>. "
        "Figures, the workflow graph and provenance are in the report's other sections.</p>"
    )
    index = out_dir / "index.html"
    atomic_write_text(index, page("Results", intro + "<ul>" + "".join(toc) + "</ul>\n" + "\n".join(sections)))
    log.info("wrote %d table page(s) and %s", len(written), index)
    return [*written, index]
