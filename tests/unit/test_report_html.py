"""The report's HTML tables: Table 1 from a measured metrics file and the paper's config/reported.yaml, rendered by
``vqinsight.report html`` and opened in a headless browser, shows the measured row and the paper's rows in their
blocks; the results page holds every table. The browser test skips when no Chromium is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vqinsight.report.__main__ import main as report_main
from vqinsight.report.html import markdown_to_html

REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "google-chrome-stable")


class Rows(HTMLParser):
    """Table rows as (class, [cell texts]) from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th") and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    metrics = {
        "system": "vqinsight", "label": "VQ-Insight (ours)", "kind": "ours", "variant": None, "n": 40,
        "format_rate": 1.0, "unparsed": 0, "demo": False, "benchmark": "monetbench", "task": "comparison",
        "metrics": {"tau": 0.6123, "tau_epsilon": 0.05, "diff": 0.7, "n_pairs": 40, "n_human_ties": 12,
                    "swap_flip_rate": 0.1, "eps_curve": None},
    }  # fmt: skip
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    out = tmp_path / "tables"
    args = ["tables", "--metrics", str(tmp_path / "m.json"), "--reported", str(REPO / "config/reported.yaml")]
    assert report_main([*args, "--out-dir", str(out)]) == 0
    assert report_main(["html", "--tables", str(out), "--out-dir", str(out / "html")]) == 0
    return out / "html"


def _table1_checks(rows: list[tuple[str, list[str]]]) -> None:
    header = next(cells for cls, cells in rows if cells and cells[0] == "Method")
    tau = header.index("MonetBench tau")
    measured = {c[0]: c for cls, c in rows if cls == "measured"}
    reported = {c[0]: c for cls, c in rows if cls == "reported"}
    assert measured["VQ-Insight (ours)"][tau] == "61.23"
    assert reported["VQ-Insight"][header.index("GenAI-Bench tau")] == "50.80"  # the paper's Table 1
    assert reported["VQ-Insight"][tau] == "61.20" and "Q-Insight" in reported
    blocks = [c[0] for cls, c in rows if cls == "block"]
    assert blocks == ["measured (this run)", "reported in the paper (not rerun)"]


def test_markdown_to_html_keeps_blocks_numbers_and_marks() -> None:
    md = "# T: x\n\nMetrics: a.\n\n| Method | A |\n|---|---:|\n| *measured (this run)* | |\n| m\\|1 | **0.5** |\n"
    md += "| *reported in the paper (not rerun)* | |\n| p | 0.4 |\n\nNotes:\n\n- one <b>\n"
    title, body = markdown_to_html(md)
    assert title == "T: x"
    p = Rows()
    p.feed(body)
    assert p.rows == [("", ["Method", "A"]), ("block", ["measured (this run)"]), ("measured", ["m|1", "0.5"]),
                      ("block", ["reported in the paper (not rerun)"]), ("reported", ["p", "0.4"])]  # fmt: skip
    assert "<b>0.5</b>" in body and "<li>one &lt;b&gt;</li>" in body


def test_html_pages_and_results_page(tables: Path) -> None:
    names = sorted(p.name for p in tables.iterdir())
    assert names == sorted(["index.html", *(f"table{k}.html" for k in range(1, 6))])
    p = Rows()
    p.feed((tables / "table1.html").read_text())
    _table1_checks(p.rows)
    index = (tables / "index.html").read_text()
    assert index.count("<table>") == 5 and "<h1>Results</h1>" in index


def test_table1_in_a_headless_browser(tables: Path, tmp_path: Path) -> None:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium-headless-shell)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    for page in ("table1.html", "index.html"):
        dom = subprocess.run([*cmd, "--dump-dom", (tables / page).as_uri()], capture_output=True, text=True,
                             timeout=60, check=True).stdout  # fmt: skip
        assert "<tbody>" in dom, "the browser parsed the page into a DOM"
        if page == "index.html":  # the results page: Table 1's section
            dom = dom[dom.index('<section id="table1">') :]
            dom = dom[: dom.index("</section>")]
        p = Rows()
        p.feed(dom)
        _table1_checks(p.rows)
