"""Bench: the rule-by-rule split of a finished Snakemake run (e.g. ``make demo``), from its own files.

``python -m vqinsight.bench dag --workdir . [--log .snakemake/log/<run>.snakemake.log] --out results/bench/dag.json``
reads the run's main log (job start and finish times, rule names, benchmark paths; the newest log by default) and
every job's ``benchmark:`` file (wall and CPU seconds), and writes per-rule job counts and seconds, the DAG's wall
span and how many seconds had 0, 1, 2, ... jobs running (to tell a throughput-bound DAG from a critical-path one).
It prints the same as a Markdown table. Snakemake's log has one-second resolution.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vqinsight.provenance import atomic_write_json

log = logging.getLogger("vqinsight.bench.dag")
_STAMP = re.compile(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")


def parse_log(text: str) -> list[dict[str, Any]]:
    """Jobs of one Snakemake main log: rule, start, end (datetimes) and benchmark path (or None)."""
    now, current = None, None
    jobs: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        if m := _STAMP.match(line):
            now = dt.datetime.strptime(re.sub(" +", " ", m.group(1)), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"(?:local)?rule (\w+):", line):
            current = {"rule": m.group(1), "start": now, "end": None, "benchmark": None}
        elif (m := re.match(r"\s+benchmark: (\S+)", line)) and current is not None:
            current["benchmark"] = m.group(1)
        elif (m := re.match(r"\s+jobid: (\d+)", line)) and current is not None:
            jobs[int(m.group(1))] = current  # its benchmark line may follow
        elif (m := re.match(r"Finished jobid: (\d+)", line)) and int(m.group(1)) in jobs:
            jobs[int(m.group(1))]["end"] = now
    return list(jobs.values())


def split(jobs: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """Per-rule totals and the concurrency histogram of the finished jobs."""
    done = [j for j in jobs if j["start"] is not None and j["end"] is not None]
    if not done:
        raise ValueError("no finished jobs in the log")
    t0, t1 = min(j["start"] for j in done), max(j["end"] for j in done)
    rules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    running: Counter[int] = Counter()
    for j in done:
        a, b = int((j["start"] - t0).total_seconds()), int((j["end"] - t0).total_seconds())
        running.update(range(a, b))
        r = rules[j["rule"]]
        r["jobs"] += 1
        r["log_s"] += b - a
        bench = workdir / j["benchmark"] if j["benchmark"] else None
        if bench is not None and bench.is_file():
            header, *rows = bench.read_text().splitlines()
            values = dict(zip(header.split("\t"), rows[-1].split("\t"), strict=True))
            r["benchmarked_jobs"] += 1
            r["benchmark_s"] += float(values["s"])
            r["cpu_s"] += float(values.get("cpu_time", "nan"))
    span = int((t1 - t0).total_seconds())
    busy = Counter(running[s] for s in range(span))
    return {
        "wall_s": span,
        "jobs": len(done),
        "unfinished_jobs": len(jobs) - len(done),
        "seconds_with_n_jobs_running": {str(n): busy[n] for n in sorted(busy)},
        "rules": {k: dict(v) for k, v in sorted(rules.items(), key=lambda kv: -kv[1]["log_s"])},
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"DAG wall {res['wall_s'] // 60} min {res['wall_s'] % 60} s, {res['jobs']} jobs; seconds with n jobs "
        f"running: {res['seconds_with_n_jobs_running']}",
        "",
        "| rule | jobs | job seconds (log) | benchmarked seconds | benchmarked CPU seconds |",
        "|---|---|---|---|---|",
    ]
    total = defaultdict(float)
    for rule, r in res["rules"].items():
        bench = r.get("benchmarked_jobs", 0)
        lines.append(
            f"| {rule} | {r['jobs']:.0f} | {r['log_s']:.0f} | "
            + (f"{r['benchmark_s']:.0f} | {r['cpu_s']:.0f} |" if bench else "– | – |")
        )
        for k in ("jobs", "log_s", "benchmark_s", "cpu_s"):
            total[k] += r.get(k, 0.0)
    cells = (total["jobs"], total["log_s"], total["benchmark_s"], total["cpu_s"])
    lines.append("| **total** | " + " | ".join(f"{v:.0f}" for v in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench dag", description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("."), help="the run's working directory")
    ap.add_argument("--log", type=Path, default=None, help="its main log (default: the newest in .snakemake/log)")
    ap.add_argument("--out", type=Path, default=Path("results/bench/dag.json"))
    a = ap.parse_args(argv)
    path = a.log
    if path is None:
        logs = sorted((a.workdir / ".snakemake" / "log").glob("*.snakemake.log"))
        if not logs:
            log.error("%s: no Snakemake log under .snakemake/log (run the workflow there first)", a.workdir)
            return 2
        path = logs[-1]
    try:
        res = split(parse_log(path.read_text()), a.workdir)
    except (OSError, ValueError) as e:
        log.error("%s: %s", path, e)
        return 2
    res["log"] = str(path)
    atomic_write_json(a.out, res)
    sys.stdout.write(markdown(res) + "\n")
    log.info("wrote %s", a.out)
    return 0
