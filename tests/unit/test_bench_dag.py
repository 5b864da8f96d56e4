"""bench dag: per-rule split and concurrency of a Snakemake run, read from its main log and benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

from vqinsight.bench.dag import main, parse_log, split

LOG = """\
Select jobs to execute...
Execute 2 jobs...
[Wed Dec  2 02:31:36 2026]
localrule download:
    output: results/demo/raw/a/.fetched.json
    jobid: 6
    reason: Missing output files
[Wed Dec  2 02:31:36 2026]
rule grpo_stage2:
    output: results/demo/grpo/stage2/comp/full/model
    jobid: 41
    benchmark: logs/grpo/comp.benchmark.tsv
    wildcards: task_model=comp, variant=full
[Wed Dec  2 02:31:46 2026]
Finished jobid: 6 (Rule: download)
[Wed Dec  2 02:31:46 2026]
localrule download:
    jobid: 7
[Wed Dec  2 02:31:50 2026]
Finished jobid: 7 (Rule: download)
[Wed Dec  2 02:32:06 2026]
Finished jobid: 41 (Rule: grpo_stage2)
[Wed Dec  2 02:32:06 2026]
localrule all:
    jobid: 0
"""


def test_split_counts_rules_benchmarks_and_concurrency(tmp_path: Path) -> None:
    bench = tmp_path / "logs/grpo/comp.benchmark.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\tcpu_time\n29.5\t0:00:29\t100.0\t27.25\n")
    jobs = parse_log(LOG)
    assert [j["rule"] for j in jobs] == ["download", "grpo_stage2", "download", "all"]
    res = split(jobs, tmp_path)
    assert res["wall_s"] == 30 and res["jobs"] == 3 and res["unfinished_jobs"] == 1  # `all` never finished
    assert res["rules"]["download"] == {"jobs": 2, "log_s": 14}
    g = res["rules"]["grpo_stage2"]
    assert (g["jobs"], g["log_s"], g["benchmark_s"], g["cpu_s"]) == (1, 30, 29.5, 27.25)
    assert res["seconds_with_n_jobs_running"] == {"1": 16, "2": 14}  # 10 s + 4 s of two jobs at once


def test_cli_writes_json_and_table(tmp_path: Path, capsys) -> None:
    logdir = tmp_path / ".snakemake/log"
    logdir.mkdir(parents=True)
    (logdir / "2026-12-02T023135.snakemake.log").write_text(LOG)
    out = tmp_path / "dag.json"
    assert main(["--workdir", str(tmp_path), "--out", str(out)]) == 0  # the newest log; no benchmark file present
    assert json.loads(out.read_text())["rules"]["grpo_stage2"] == {"jobs": 1, "log_s": 30}
    table = capsys.readouterr().out
    assert "| grpo_stage2 | 1 | 30 | – | – |" in table and "| **total** | 3 | 44 |" in table
    assert main(["--workdir", str(tmp_path / "nothing"), "--out", str(out)]) == 2
