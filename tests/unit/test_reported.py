"""The rendered "reported in the paper" rows of Tables 1-6 against the paper's own tables, cell for cell.

The paper (plain text with Markdown tables) is read from ../shared/reference/paper/ and parsed here; nothing of it is
copied into the repository. Each paper table is found as the Markdown table nearest to its "Table N:" caption.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vqinsight.report.tables import (
    DASH,
    REPORTED_BLOCK,
    Table,
    build_table6,
    build_tables,
    load_reported,
    render_markdown,
)

REPO = Path(__file__).resolve().parents[2]
PAPER_DIR = REPO.parent / "shared" / "reference" / "paper"
REPORTED = REPO / "config" / "reported.yaml"

pytestmark = pytest.mark.skipif(not PAPER_DIR.is_dir(), reason="the paper text (../shared/reference/paper) is absent")

_DATASETS_T3 = ("lsvq_test", "lsvq_1080p", "livevqc", "konvid")
# Position of each value cell in the paper's rows -> reported.yaml column key (the paper's header order).
PAPER_COLUMNS = {
    "table1": ["genaibench_tau", "genaibench_diff", "monetbench_tau", "monetbench_diff"],
    "table2": [f"{d}_{m}" for d in ("spatial", "temporal", "alignment") for m in ("srcc", "krcc", "plcc")],
    "table3": [f"{b}_plcc" for b in _DATASETS_T3] + [f"{b}_srcc" for b in _DATASETS_T3],  # PLCC row, then SRCC row
    "table4": ["plcc", "krcc", "srcc"],
    "table5": ["genaibench_tau", "genaibench_diff", "monetbench_tau", "monetbench_diff"],
    "table6": ["overall_score", "quality_score", "semantic_score"],
}
COMPONENTS = {"table4": ["warmup", "tmr", "lcr"], "table5": ["lcr", "uf"]}
# The text's check marks: the extraction renders a tick as "✓", "\checkmark", "1" or "~" and a cross as "×" or "X".
MARKS = {"✓": True, "\\checkmark": True, "1": True, "~": True, "×": False, "X": False}
_VALUE = re.compile(r"(<u>)?(-|\d+\.\d+)(</u>)?")
_CITATION = re.compile(r"\s*\(([^()]*\d{4}[a-z]?)\)$")


# ------------------------------------------------------------------------------------------ the paper's tables
def _paper_text() -> str:
    files = sorted(PAPER_DIR.glob("*.txt"))
    assert len(files) == 1, f"expected one paper text in {PAPER_DIR}, found {files}"
    return files[0].read_text(encoding="utf-8")


def _blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line index of every run of Markdown table lines."""
    out, start = [], None
    for i, line in enumerate([*lines, ""]):
        if line.lstrip().startswith("|"):
            start = i if start is None else start
        elif start is not None:
            out.append((start, i - 1))
            start = None
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def paper_tables() -> dict[str, list[list[str]]]:
    """Cells of every row of the paper's Tables 1-6 (separator rows dropped)."""
    lines = _paper_text().splitlines()
    blocks = _blocks(lines)
    out = {}
    for n in range(1, 7):
        (cap,) = [i for i, line in enumerate(lines) if line.startswith(f"Table {n}:")]
        # the nearest table; at equal distance the one below the caption (Table 5's sits between Tables 4 and 5)
        first, last = min(blocks, key=lambda b: (min(abs(b[0] - cap), abs(b[1] - cap)), b[0] < cap))
        rows = [_cells(x) for x in lines[first : last + 1]]
        out[f"table{n}"] = [r for r in rows if not all(re.fullmatch(r":?-*:?", c) for c in r)]
    return out


def _value(cell: str) -> tuple[str, bool] | None:
    """(the printed number or "-", underlined) of a value cell; None for a non-value cell."""
    m = _VALUE.fullmatch(cell)
    return None if m is None else (m.group(2), m.group(1) is not None)


def _split_name(cell: str) -> tuple[str, str | None]:
    """("VQAScore", "Lin et al. 2024") from "VQAScore (Lin et al. 2024)"; a non-citation parenthesis stays."""
    m = _CITATION.search(cell)
    return (cell[: m.start()].strip(), m.group(1)) if m else (cell, None)


def paper_rows(name: str) -> list[dict]:
    """One dict per paper row: name (or case), citation, {key: (printed, underlined)}, components."""
    rows = paper_tables()[name]
    out = []
    if name == "table3":  # two rows per method: the name and PLCC, then the citation (or "(Ours)") and SRCC
        data = [r for r in rows if r[1] in ("PLCC", "SRCC")]
        for plcc, srcc in zip(data[::2], data[1::2], strict=True):
            assert (plcc[1], srcc[1]) == ("PLCC", "SRCC")
            label, citation = _split_name(srcc[0])
            method = plcc[0] if citation else f"{plcc[0]} {srcc[0]}"
            vals = [_value(c) for c in plcc[2:6] + srcc[2:6]]
            out.append({"name": method, "citation": citation, "values": vals})
    else:
        for r in rows:
            vals = [v for c in r[1:] if (v := _value(c)) is not None]
            if not vals:
                continue  # a header row
            method, citation = _split_name(r[0])
            row = {"name": method, "citation": citation, "values": vals}
            if name in COMPONENTS:
                row["components"] = [MARKS[c] for c in r[1 : 1 + len(COMPONENTS[name])]]
            out.append(row)
    for row in out:
        assert len(row["values"]) == len(PAPER_COLUMNS[name]), (name, row)
        row["values"] = dict(zip(PAPER_COLUMNS[name], row["values"], strict=True))
    return out


# ------------------------------------------------------------------------------------------ our rendered tables
def rendered_tables() -> dict[str, Table]:
    reported = load_reported(REPORTED)
    tables = build_tables([], reported)
    tables["table6"] = build_table6([], reported)
    return tables


def rendered_reported_rows(table: Table) -> list[tuple[str, dict[str, str]]]:
    """(label, {column key: printed cell}) of each row of the Markdown's reported block."""
    lines = render_markdown(table).splitlines()
    start = lines.index(f"| *{REPORTED_BLOCK}* |" + " |" * len(table.columns)) + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        label = cells[0].replace("\\", "")  # the Markdown escapes of _md_escape
        out.append((label, dict(zip([c.key for c in table.columns], cells[1:], strict=True))))
    return out


def _key(name: str, table: Table, paper_key: str) -> str:
    """The rendered column of a paper column: Table 3's PLCC sits under the fit reported.yaml names."""
    if name == "table3" and paper_key.endswith("_plcc"):
        fit = str(yaml.safe_load(REPORTED.read_text())["tables"]["table3"].get("plcc_fit", "logistic4"))
        return paper_key + ("_raw" if fit in ("none", "raw", "linear") else "_logistic")
    if name == "table4":
        return f"lgvq_mean_{paper_key}"
    return paper_key


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"table{n}" for n in range(1, 7)])
def test_rendered_reported_rows_equal_the_papers_tables(name: str) -> None:
    table = rendered_tables()[name]
    paper = paper_rows(name)
    ours = rendered_reported_rows(table)
    assert len(ours) == len(paper), f"{name}: {len(ours)} reported rows rendered, the paper has {len(paper)}"
    for (label, cells), row in zip(ours, paper, strict=True):  # same rows, same order
        if name in COMPONENTS:
            assert label.split()[0] == row["name"], (name, label, row["name"])  # "(a) w/o ..." is case (a)
        else:
            assert label == row["name"], (name, label, row["name"])
        keys = {_key(name, table, k) for k in row["values"]}
        for k, (printed, _) in row["values"].items():
            want = DASH if printed == "-" else printed
            assert cells[_key(name, table, k)] == want, f"{name} {label} {k}: {cells[_key(name, table, k)]} != {want}"
        extra = {k: v for k, v in cells.items() if k not in keys and v != DASH}
        assert not extra, f"{name} {label}: numbers the paper does not print there: {extra}"


@pytest.mark.parametrize("name", [f"table{n}" for n in range(1, 7)])
def test_paper_column_order_is_kept(name: str) -> None:
    table = rendered_tables()[name]
    order = [c.key for c in table.columns]
    wanted = list(dict.fromkeys(_key(name, table, k) for k in PAPER_COLUMNS[name]))
    if name == "table3":  # per dataset: PLCC, then SRCC
        wanted = [_key(name, table, f"{b}_{m}") for b in _DATASETS_T3 for m in ("plcc", "srcc")]
    positions = [order.index(k) for k in wanted]
    assert positions == sorted(positions), f"{name}: columns {order} are not in the paper's order {wanted}"


@pytest.mark.parametrize("name", [f"table{n}" for n in range(1, 7)])
def test_reported_yaml_citations_underlines_and_components(name: str) -> None:
    spec = yaml.safe_load(REPORTED.read_text())["tables"][name]
    for item, row in zip(spec["rows"], paper_rows(name), strict=True):
        assert item.get("citation") == row["citation"], (name, item["method"])
        underlined = sorted(k for k, (_, u) in row["values"].items() if u)
        assert sorted(item.get("underlined", [])) == underlined, (name, item["method"])
        if name in COMPONENTS:
            assert [item["components"][c] for c in COMPONENTS[name]] == row["components"], (name, item["case"])
