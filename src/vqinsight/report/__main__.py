"""Command line of the report: ``tables``, ``figures`` and ``index`` (alias ``manifest``) subcommands.

    python -m vqinsight.report tables  --metrics M.json ... [--reported config/reported.yaml] --out-dir DIR [--demo]
    python -m vqinsight.report table6  --evals ours=results/demo/stage3/eval/united_r2.json ... --out-dir DIR
    python -m vqinsight.report figures [--metrics M.json ...] [--curves [LABEL=]curves.csv ...] --out-dir DIR
    python -m vqinsight.report index   --tables DIR --figures DIR --out index.md
    python -m vqinsight.report html    --tables DIR --out-dir DIR [--only table1 ...]
    python -m vqinsight.report learning --models LABEL=MODEL_DIR ... --out-dir DIR

The index is a short Markdown page linking every table and figure, for ``snakemake --report`` and for humans.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vqinsight.provenance import atomic_write_text
from vqinsight.report.figures import write_figures
from vqinsight.report.html import write_html
from vqinsight.report.learning import write_learning
from vqinsight.report.tables import write_table6, write_tables

log = logging.getLogger("vqinsight.report")


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def write_index(tables_dir: str | Path, figures_dir: str | Path, out: str | Path) -> Path:
    """Write a Markdown index linking ``table*.md|tex|csv`` and ``*.png|pdf``, with paths relative to ``out``."""
    tables_dir, figures_dir, out = Path(tables_dir), Path(figures_dir), Path(out)
    base = out.parent
    lines = ["# vqinsight report", "", "## Tables", ""]
    tables = sorted(tables_dir.glob("table*.md"), key=lambda p: (len(p.stem), p.stem))
    for md in tables:
        first = md.read_text(encoding="utf-8").split("\n", 1)[0]
        title = first.lstrip("# ").strip() or md.stem
        links = [f"[{ext}]({_rel(md.with_suffix('.' + ext), base)})" for ext in ("md", "tex", "csv")]
        lines.append(f"- {title}: " + " · ".join(links))
    if not tables:
        lines.append(f"(no tables in {tables_dir})")
    lines += ["", "## Figures", ""]
    pngs = sorted(figures_dir.glob("*.png"))
    for png in pngs:
        pdf = png.with_suffix(".pdf")
        extra = f" ([pdf]({_rel(pdf, base)}))" if pdf.exists() else ""
        lines.append(f"- [{png.stem}]({_rel(png, base)}){extra}")
    if not pngs:
        lines.append(f"(no figures in {figures_dir})")
    lines.append("")
    atomic_write_text(out, "\n".join(lines))
    log.info("wrote %s (%d tables, %d figures)", out, len(tables), len(pngs))
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.report", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tables", help="write table1..table5 as .md, .tex and .csv")
    t.add_argument("--metrics", nargs="+", type=Path, default=[], help="metrics JSON files")
    t.add_argument("--reported", type=Path, default=None, help="paper numbers (config/reported.yaml); optional")
    t.add_argument("--out-dir", required=True, type=Path)
    t.add_argument("--demo", action="store_true", help="mark every measured row as a demo result")
    t6 = sub.add_parser("table6", help="write table6 (the generator, stage 3) as .md, .tex and .csv")
    t6.add_argument(
        "--evals",
        nargs="+",
        required=True,
        metavar="ROW=JSON",
        help="row key (t2v_turbo, videodpo, ours_no_uf, ours) = generator evaluation JSON",
    )
    t6.add_argument("--reported", type=Path, default=None)
    t6.add_argument("--out-dir", required=True, type=Path)
    t6.add_argument("--demo", action="store_true")
    f = sub.add_parser("figures", help="write scatter, training-curve, tau-epsilon and swap-flip figures")
    f.add_argument("--metrics", nargs="*", type=Path, default=[], help="metrics JSON files (points files beside)")
    f.add_argument("--curves", nargs="*", default=[], metavar="[LABEL=]CSV", help="training curves.csv files")
    f.add_argument("--out-dir", required=True, type=Path)
    f.add_argument("--dpi", type=int, default=150, help="PNG resolution (config report.dpi)")
    i = sub.add_parser("index", aliases=["manifest"], help="write a Markdown index of tables and figures")
    i.add_argument("--tables", required=True, type=Path, help="directory with table*.md|tex|csv")
    i.add_argument("--figures", required=True, type=Path, help="directory with *.png|pdf")
    i.add_argument("--out", required=True, type=Path, help="index Markdown file")
    h = sub.add_parser("html", help="write each table*.md as an HTML page, and index.html with all of them")
    h.add_argument("--tables", required=True, type=Path, help="directory with table*.md (the tables subcommand's)")
    h.add_argument("--out-dir", required=True, type=Path)
    h.add_argument("--only", nargs="*", default=None, metavar="TABLE", help="these tables (stems) only")
    le = sub.add_parser("learning", help="write learning.md|csv|json: held-out metrics before/after each training")
    le.add_argument("--models", nargs="+", required=True, metavar="LABEL=DIR", help="trained model dirs (eval.json)")
    le.add_argument("--out-dir", required=True, type=Path)
    p = sub.add_parser("provenance", help="one CSV row per meta.json: what produced each result, with which code")
    p.add_argument("--meta", nargs="+", type=Path, required=True, help="meta.json files")
    p.add_argument("--root", type=Path, default=Path("."), help="paths in the table are relative to this")
    p.add_argument("--out", required=True, type=Path, help="provenance CSV")
    return ap


PROVENANCE_PACKAGES = ("torch", "transformers", "trl", "accelerate", "snakemake")


def write_provenance(metas: Sequence[Path], root: Path, out: Path) -> Path:
    """A CSV (one row per result) of git SHA, creation time, device and key package versions from meta.json files."""
    import csv
    import io
    import json

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["result", "created", "git_sha", "device", *PROVENANCE_PACKAGES, "command"])
    for m in sorted(metas):
        try:
            obj = json.loads(Path(m).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{m}: unreadable provenance file ({e})") from e
        dev = obj.get("device") or {}
        gpus = dev.get("gpu")
        device = ", ".join(gpus) if gpus else f"CPU ({dev.get('cpu_count', '?')} cores)"
        pk = obj.get("packages") or {}
        try:
            rel = str(Path(m).resolve().relative_to(root.resolve()))
        except ValueError:
            rel = str(m)
        argv = " ".join(obj.get("argv") or [])
        w.writerow(
            [rel, obj.get("created"), obj.get("git_sha"), device, *(pk.get(k) for k in PROVENANCE_PACKAGES), argv]
        )
    atomic_write_text(out, buf.getvalue())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns the exit status (1 on unreadable or invalid metrics files)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "tables":
            written = write_tables(args.metrics, args.reported, args.out_dir, demo=args.demo)
        elif args.command == "table6":
            pairs = []
            for item in args.evals:
                key, sep, path = item.partition("=")
                if not sep or not key or not path:
                    raise ValueError(f"--evals {item!r}: expected ROW=JSON")
                pairs.append((key, path))
            written = write_table6(pairs, args.reported, args.out_dir, demo=args.demo)
        elif args.command == "figures":
            written = write_figures(args.metrics, args.curves, args.out_dir, dpi=args.dpi)
        elif args.command == "html":
            written = write_html(args.tables, args.out_dir, args.only)
        elif args.command == "provenance":
            written = [write_provenance(args.meta, args.root, args.out)]
        elif args.command == "learning":
            evals = {}
            for item in args.models:
                label, sep, path = item.partition("=")
                if not sep or not label or not path:
                    raise ValueError(f"--models {item!r}: expected LABEL=DIR")
                evals[label] = Path(path) / "eval.json"
            written = write_learning(evals, args.out_dir)
        else:
            written = [write_index(args.tables, args.figures, args.out)]
    except (OSError, ValueError) as e:
        log.error("%s: %s", args.command, e)
        return 1
    log.info("%s: %d file(s) written", args.command, len(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
