"""The workflow as a user runs it: lint, config validation, the DAG of both configs, and the demo end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from vqinsight.data.manifest import load_manifest
from vqinsight.data.registry import DATASET_KEYS

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def smk(*args: str, cwd: Path = ROOT, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(
        [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(cwd), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
        )
    return p


def job_counts(out: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_lint_is_clean():
    p = smk("--lint", cwd=ROOT)
    assert "Congratulations" in p.stdout + p.stderr


def test_snakefmt_is_clean():
    p = subprocess.run(
        [str(Path(sys.executable).with_name("snakefmt")), "--check", "Snakefile", "rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_paper_dry_run_lists_a_download_and_manifest_job_per_dataset(tmp_path):
    p = smk("-n", "-p", cwd=tmp_path)
    counts = job_counts(p.stdout)
    assert counts["download"] == len(DATASET_KEYS) and counts["manifest"] == len(DATASET_KEYS)
    for key in DATASET_KEYS:
        assert f"--dataset {key} " in p.stdout
        assert f"results/paper/manifests/{key}.parquet" in p.stdout
    assert "https://huggingface.co/datasets/zhiyuanyou/Data-DeQA-Score" in p.stdout


def test_videodpo_pairs_give_table6_a_videodpo_row(tmp_path):
    """stage3.videodpo: G_0 is DPO-trained on VideoDPO's released pairs (its pair.json format) for Table 6."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["stage3"]["videodpo"] = {"meta": str(tmp_path / "videodpo meta")}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = smk("-n", "-p", "--configfile", str(path), cwd=tmp_path)
    out = p.stdout + p.stderr
    assert job_counts(out)["dpo_train"] == 4, out[-3000:]
    assert "--videodpo '" + str(tmp_path / "videodpo meta") + "'" in out and "stage3/generators/videodpo" in out
    assert "videodpo=results/demo/stage3/eval/videodpo.json" in out, "the table6 job gets the VideoDPO row"


def test_judge_engine_settings_reach_every_judge_job_and_defaults_add_nothing(tmp_path):
    """eval.judge.engine / compile / margin_from_cache / vllm_args become the judge CLI's flags in the eval and
    stage-3 judge jobs; the defaults add no flag, so existing results keep their shell commands (no params-triggered
    reruns)."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["eval"]["judge"] |= {
        "engine": "vllm", "vllm_args": {"tensor_parallel_size": 2}, "compile": False, "margin_from_cache": False,
    }  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = smk("-n", "-p", "--configfile", str(path), cwd=tmp_path).stdout
    judge_cmds = [line for line in out.splitlines() if "python -m vqinsight.judge " in line]
    want = "--engine vllm --no-compile --no-margin-from-cache --vllm-args '{\"tensor_parallel_size\": 2}'"
    assert judge_cmds and all(want in c for c in judge_cmds)
    assert "--split all" in " ".join(judge_cmds), "the stage-3 pair judging gets them too"
    default = smk("-n", "-p", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=tmp_path).stdout
    assert "python -m vqinsight.judge " in default and "--engine" not in default and "--compile" not in default
    assert "margin-from-cache" not in default
    cfg["eval"]["judge"] |= {"engine": "tensorrt"}
    path.write_text(yaml.safe_dump(cfg))
    bad = smk("-n", "--configfile", str(path), cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "engine" in bad.stdout + bad.stderr


def test_hostile_paths_pass_through_real_rules_quoted(tmp_path):
    """Data and results folders whose names hold spaces, quotes and $(...) go through the download, manifest and
    frame-cache rules (real jobs, real shell commands): outputs land there and nothing is executed."""
    evil = 'my data "q\'x$(touch PWNED)" `touch PWNED2`'
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["raw_dir"], cfg["results_dir"] = f"{evil}/raw", f"{evil}/results"
    cfg["datasets"]["konvid"]["synthetic"]["counts"] = {"test": 8}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    target = f"{evil}/results/frames/konvid.json"
    smk("--cores", "1", target, "--configfile", str(path), cwd=tmp_path)
    df = load_manifest(tmp_path / evil / "results/manifests/konvid.parquet", scale=(1.0, 5.0))
    assert df.height == 8 and all(evil in m for m in df["media"].list.first().to_list())
    assert (tmp_path / target).is_file()
    assert not list(tmp_path.rglob("PWNED*")) and not list(ROOT.glob("PWNED*")), "a path reached a shell unquoted"


def test_demo_config_does_not_inherit_paper_urls(tmp_path):
    p = smk("-n", "-p", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=tmp_path)
    assert job_counts(p.stdout)["download"] == len(DATASET_KEYS)
    assert "huggingface.co" not in p.stdout and '"source": "synthetic"' in p.stdout


def test_chain_datasets_are_prepared_first_and_training_before_evaluation(tmp_path):
    """Priorities are not inherited by a job's inputs: the data that the chain (warm start, stage 1, the stage-3
    judge's stage-2 model) reads carries the chain's priority, the other datasets the stage-3 rounds' one."""
    p = smk("-n", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=tmp_path)
    jobs: dict[tuple[str, str], int] = {}  # (rule, wildcards) -> priority
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", p.stdout, flags=re.M)[1:]:
        wc = re.search(r"^\s+wildcards: (.+)$", block, flags=re.M)
        pr = re.search(r"^\s+priority: (\d+)$", block, flags=re.M)
        jobs[block.split()[1].rstrip(":"), wc.group(1) if wc else ""] = int(pr.group(1)) if pr else 0
    prio = {(rule, wc.removeprefix("dataset=")): v for (rule, wc), v in jobs.items() if wc.startswith("dataset=")}
    for rule in ("download", "manifest", "frame_cache"):
        for ds in ("koniq", "visionreward", "monetbench"):  # warm start / stage 1, and comp's training + held-out
            if (rule, ds) != ("frame_cache", "koniq"):  # images: no frame cache
                assert prio.get((rule, ds)) == 20, (rule, ds, prio)
    assert prio[("manifest", "lsvq")] == 15 and prio[("frame_cache", "lgvq")] == 15, prio  # before stage 2 reads it
    # every other training job goes before the evaluation jobs, which then fill the second slot to the end
    assert jobs["grpo_stage2", "task_model=comp, variant=full"] == 20, jobs
    assert jobs["grpo_stage2", "task_model=aigcvideo, variant=full"] == 5
    assert jobs["stage2_format", "task_model=aigcvideo, start=stage1"] == 5
    assert jobs["sft_baseline", "task_model=naturalvideo"] == 5
    assert jobs["judge_predict", "system=base, benchmark=lgvq"] == 0
    assert jobs["stage3_prompts", ""] == 15, "the stage-3 rounds start as soon as their prompts can be drawn"


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        (lambda c: c["data"].update(nframe=8), "data: Additional properties are not allowed ('nframe'"),  # typo
        (lambda c: c["data"].update(reader="opencv"), "data.reader: 'opencv' is not one of"),
        (lambda c: c["datasets"]["koniq"].update(source="ftp"), "datasets.koniq.source: 'ftp'"),
        (lambda c: c["datasets"].update(konik={"source": "local"}), "('konik' was unexpected)"),
        (lambda c: c["model"].pop("base"), "model: 'base' is a required property"),
        (
            lambda c: c["grpo"]["stage2"]["task_models"].update(x={"tasks": ["dance"], "datasets": ["lsvq"]}),
            "grpo.stage2.task_models.x.tasks.0: 'dance'",
        ),
    ],
)
def test_bad_config_is_rejected_naming_the_key(tmp_path, patch, needle):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    patch(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    p = smk("-n", "--configfile", str(bad), cwd=tmp_path, check=False)
    assert p.returncode != 0
    assert needle in p.stdout + p.stderr


# The demo DAG (~14 min on 2 cores) runs inside the setup of the first test that uses it, which pytest-timeout
# counts against that test: those tests get a limit above the DAG's own 40-minute subprocess timeout.
DEMO_TIMEOUT = pytest.mark.timeout(2700)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`make demo` in miniature: the whole demo DAG in a scratch working directory (minutes on 2 cores)."""
    wd = tmp_path_factory.mktemp("demo")
    smk("--cores", "2", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=wd, timeout=2400)
    return wd


@pytest.mark.slow
@DEMO_TIMEOUT
def test_demo_builds_every_manifest_then_has_nothing_to_do(demo_run):
    for key in DATASET_KEYS:
        df = load_manifest(demo_run / "results/demo/manifests" / f"{key}.parquet", scale=(1.0, 5.0))
        assert df.height > 0, key
        quarantine = pl.read_csv(demo_run / "results/demo/quarantine" / f"{key}.csv")
        assert quarantine.height == 0, f"{key}: clean synthetic data was quarantined:\n{quarantine}"
        assert (demo_run / "results/demo/manifests" / f"{key}.meta.json").is_file()
    again = smk("-n", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=demo_run)
    assert "Nothing to be done" in again.stdout + again.stderr


def _eval(demo_run: Path, model: str) -> dict:
    import json

    return json.loads((demo_run / "results/demo/grpo" / model / "eval.json").read_text())


@pytest.mark.slow
@DEMO_TIMEOUT
def test_demo_jobs_run_the_portable_cpu_kernels(demo_run):
    """config/demo.yaml's `cpu_float_order: portable` reaches the training jobs' environment (the Snakefile sets it,
    torch reads it when it loads), so the learning numbers below are the same on any x86-64 CPU with AVX2; each job
    records it in its model's meta.json and says it in its log."""
    import json

    from vqinsight.cpu_kernels import PORTABLE_ENV

    for model, log in [("stage1/model", "stage1"), ("stage2/comp/full/model", "stage2_comp_full")]:
        meta = json.loads((demo_run / "results/demo/grpo" / model / "meta.json").read_text())
        kernels = meta["device"]["cpu_kernels"]
        assert {k: kernels.get(k) for k in PORTABLE_ENV} == PORTABLE_ENV, (model, kernels)
        text = (demo_run / "logs/demo/grpo" / f"{log}.log").read_text()
        assert "CPU kernels: {'ATEN_CPU_CAPABILITY': 'avx2'" in text, log


@pytest.mark.slow
@DEMO_TIMEOUT
def test_stage1_judge_learns_the_score_by_grpo(demo_run):
    """Acceptance: held-out SRCC rises to >= 0.3 by GRPO from a format-only warm start that does not rank the images.

    Seed 0 (the demo's) reaches 0.665 in the demo's portable CPU float order, the same on every CPU; the grid in
    docs/DEMO_LEARNING.md says on how many other seeds the claim holds. Its warm start's greedy answers may rank the
    images either way (seed 0: -0.5), so "before" only bounds the right way."""
    res = _eval(demo_run, "stage1/model")
    before, after = res["before"]["image_score"], res["after"]["image_score"]
    # the warm start does not rank the right way already (its near-uniform greedy answers may rank either way)
    assert before["format_rate"] >= 0.95 and before["srcc"] <= 0.2, before
    assert after["format_rate"] >= 0.9 and after["srcc"] >= 0.3, after
    assert (demo_run / "results/demo/grpo/stage1/model/curves.csv").is_file()


@pytest.mark.slow
@DEMO_TIMEOUT
def test_stage2_comparison_judge_learns_a_verdict_by_grpo(demo_run):
    """Acceptance: held-out MonetBench accuracy (ties excluded, greedy, one order) of the comparison model rises by
    >= 15 points over its start (the stage-1 model after a format-only warm start with random verdicts), and the
    verdict is not one constant letter. Seed 0 in the portable float order: 0.559 -> 0.935, 40 % "A"."""
    res = _eval(demo_run, "stage2/comp/full/model")
    before, after = res["before"]["comparison"], res["after"]["comparison"]
    assert after["format_rate"] >= 0.95, after
    assert after["accuracy"] >= before["accuracy"] + 0.15, (before, after)
    assert 0.05 <= after["rate_A"] <= 0.95, after


@pytest.mark.slow
@DEMO_TIMEOUT
def test_stage2_video_score_models_rank_held_out_videos(demo_run):
    """The video score models rank held-out videos: `naturalvideo` on LSVQ (what stage 1 transferred, kept at lr
    1e-4, beta 0.2) and `aigcvideo` on LGVQ's spatial dimension (learned by GRPO), SRCC >= 0.3 each. Seed 0 gives
    0.588 and 0.638 in the portable float order (docs/DEMO_LEARNING.md)."""
    natural = _eval(demo_run, "stage2/naturalvideo/full/model")["after"]["video_score"]
    assert natural["srcc"] >= 0.3, natural
    aigc = _eval(demo_run, "stage2/aigcvideo/full/model")["after"]["multidim_score"]
    assert aigc["spatial"]["srcc"] >= 0.3, aigc


@pytest.mark.slow
@DEMO_TIMEOUT
def test_stage2_trains_every_task_model_with_temporal_and_length_rewards(demo_run):
    import csv

    for task_model, task in (("comp", "comparison"), ("naturalvideo", "video_score"), ("aigcvideo", "multidim_score")):
        model = demo_run / "results/demo/grpo/stage2" / task_model / "full" / "model"
        header = next(csv.reader(open(model / "curves.csv")))
        for key in (
            "rewards/temporal/mean",
            "rewards/length/mean",
            "temporal/acc_ordered",
            "temporal/acc_shuffled",
            f"task/{task}/reward",
        ):
            assert key in header, key
        assert {"before", "after"} <= set(_eval(demo_run, f"stage2/{task_model}/full/model"))


@pytest.mark.slow
@DEMO_TIMEOUT
def test_ablations_are_config_variants_of_the_same_rule(demo_run):
    """no_temporal / no_length switch the reward off in the recipe; no_warmup starts stage 2 from the base model."""
    import csv

    root = demo_run / "results/demo/grpo/stage2"

    def recipe(variant: str) -> dict:
        return json.loads((root / f"aigcvideo/{variant}/model/meta.json").read_text())["config"]["recipe"]

    assert recipe("full")["temporal"]["enabled"] and recipe("full")["rewards"]["length"]["weight"] > 0
    assert not recipe("no_temporal")["temporal"]["enabled"]
    assert recipe("no_temporal")["rewards"] == recipe("full")["rewards"]
    assert recipe("no_length")["rewards"]["length"]["weight"] == 0.0 and recipe("no_length")["temporal"]["enabled"]
    header = next(csv.reader(open(root / "aigcvideo/no_temporal/model/curves.csv")))
    assert "temporal/acc_shuffled" not in header, "no shuffled rollouts without the temporal reward"
    meta = json.loads((root / "aigcvideo/format_from_base/init/meta.json").read_text())
    assert "demo_base" in json.dumps(meta), "the no-warm-up ablation starts from the base model, not stage 1"


@pytest.mark.slow
@DEMO_TIMEOUT
def test_demo_ends_in_tables_and_figures(demo_run):
    """Acceptance (issue 4): Tables 1-6 in md/tex/csv, figures as PNG+PDF, metrics for every system."""
    res = demo_run / "results/demo"
    for k in range(1, 7):
        for ext in ("md", "tex", "csv"):
            assert (res / "tables" / f"table{k}.{ext}").stat().st_size > 0
    md = (res / "tables/table1.md").read_text()
    assert "VQ-Insight (demo)" in md and "reported in the paper" in md
    figs = {p.name for p in (res / "figures").iterdir()}
    for name in ("tau_epsilon", "swap_flip", "scatter_lsvq_test", "scatter_lgvq", "curves_stage1"):
        assert {f"{name}.png", f"{name}.pdf"} <= figs, name
    for system in (
        "vqinsight",
        "base",
        "sft",
        "clipscore",
        "clip_iqa",
        "no_warmup",
        "no_temporal",
        "no_length",
        "no_united",
    ):
        assert any((res / "eval/metrics" / system).glob("*.json")), system
    m = json.loads((res / "eval/metrics/vqinsight/monetbench.json").read_text())
    assert m["metrics"]["n_pairs"] == 160 and m["metrics"]["swap_flip_rate"] is not None
    assert 0.0 <= m["metrics"]["tau"] <= 1.0 and 0.0 <= m["metrics"]["diff"] <= 1.0
    preds = (res / "eval/predictions/vqinsight/monetbench.jsonl").read_text().splitlines()
    assert len(preds) == 2 * 160, "every pair is judged in both orders"


@pytest.mark.slow
@DEMO_TIMEOUT
def test_stage3_runs_two_rounds_of_united_finetuning_and_renders_table6(demo_run):
    """Acceptance (issue 5): sample, judge all C(N,2) pairs, win/lose, DPO, refine the judge; twice; Table 6."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["stage3"]
    s3 = demo_run / "results/demo/stage3"
    n_train, n = cfg["prompts"]["train"], cfg["samples_per_prompt"]
    # round 1 is shared by both chains: no separate no_uf_r1 generator
    assert sorted(p.name for p in (s3 / "generators").iterdir()) == ["g0", "no_uf_r2", "united_r1", "united_r2"]
    for judge, gen in (("j0", "g0"), ("united_r1", "united_r1"), ("j0", "united_r1")):
        summary = json.loads((s3 / f"pairs/{judge}/{gen}.summary.json").read_text())
        assert summary["n_prompts"] == n_train and summary["n_pairs"] == n_train * n * (n - 1) // 2, summary
        assert summary["n_judgments"] == 2 * summary["n_pairs"], "both orders"
        pairs = [json.loads(x) for x in (s3 / f"pairs/{judge}/{gen}.jsonl").read_text().splitlines()]
        assert len(pairs) == n_train and all(p["win"] != p["lose"] for p in pairs)
        assert all(p["wins"][p["indices"].index(p["win_index"])] == max(p["wins"]) for p in pairs), "Eq. 8: most wins"
    recipe = yaml.safe_load((ROOT / cfg["dpo"]["recipe"]).read_text())
    for gen in ("united_r1", "united_r2", "no_uf_r2"):
        summary = json.loads((s3 / f"generators/{gen}/dpo_summary.json").read_text())
        assert summary["steps"] == recipe["max_steps"] and summary["pairs"] == n_train, summary
        rows = (s3 / f"curves/{gen}/train_log.csv").read_text().splitlines()
        assert len(rows) == 1 + recipe["max_steps"], "one logged row per DPO step"
    # united finetuning: the refined judge of round r trained on its refine set plus the original comparison data
    for r in (1, 2):
        refine = pl.read_parquet(s3 / f"refine/united_r{r}.parquet")
        assert refine.height == n_train and set(refine["gt_choice"]) <= {"A", "B"}
        meta = json.loads((s3 / f"judges/united_r{r}/model/meta.json").read_text())
        assert f"refine/united_r{r}.parquet" in json.dumps(meta) and "visionreward.parquet" in json.dumps(meta)
    # Table 1's headline comparison rows are after united finetuning; the w/o UF ablation uses the stage-2 model
    ours = json.loads((demo_run / "results/demo/eval/predictions/vqinsight/monetbench.jsonl.meta.json").read_text())
    no_uf = json.loads((demo_run / "results/demo/eval/predictions/no_united/monetbench.jsonl.meta.json").read_text())
    assert "stage3/judges/united_r2/model" in ours["config"]["model"]
    assert ours["config"]["model"] != no_uf["config"]["model"] and "grpo/stage2/comp/full" in no_uf["config"]["model"]
    md = (demo_run / "results/demo/tables/table6.md").read_text()
    for label in ("T2V-Turbo (G0) (demo)", "Ours w/o UF (demo)", "Ours (demo)", "VideoDPO"):
        assert label in md, label
    csv_rows = pl.read_csv(demo_run / "results/demo/tables/table6.csv")
    measured = csv_rows.filter(pl.col("block") == "measured")
    assert set(measured["system"]) == {"t2v_turbo", "ours_no_uf", "ours_r1", "ours"}
    wr = measured.filter(pl.col("column") == "winrate_vs_g0")["value"].drop_nulls().to_list()
    assert len(wr) == 3 and all(0.0 <= v <= 1.0 for v in wr)


def test_ruff_is_clean():
    ruff = str(Path(sys.executable).with_name("ruff"))
    for args in (["check", "."], ["format", "--check", "."]):
        p = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------------------------
# Rerun semantics on the finished demo: only what a change affects is planned again (dry runs, nothing is rerun).
# ---------------------------------------------------------------------------------------------------------------
DATA_RULES = {"download", "manifest", "frame_cache", "tiny_model", "demo_base"}


def planned(cwd: Path, configfile: Path) -> dict[str, int]:
    """Rule -> job count of a dry run ({} when there is nothing to do)."""
    import re

    p = smk("-n", "--configfile", str(configfile), cwd=cwd)
    out = p.stdout + p.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


def _config_variant(demo_run: Path, name: str, patch) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    patch(cfg)
    path = demo_run / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
@DEMO_TIMEOUT
def test_rerun_stage2_hyperparameter_reruns_stage2_and_downstream_only(demo_run):
    """(a) An edited stage-2 recipe reruns stage 2, its predictions, metrics and report; not stage 1 or data."""
    recipe = yaml.safe_load((ROOT / "config/recipes/demo_stage2.yaml").read_text())
    recipe["trainer"]["learning_rate"] = 5e-4
    (demo_run / "stage2_lr.yaml").write_text(yaml.safe_dump(recipe))
    cfg = _config_variant(
        demo_run, "cfg_lr", lambda c: c["grpo"]["stage2"].update(recipe=str(demo_run / "stage2_lr.yaml"))
    )
    jobs = planned(demo_run, cfg)
    n_models = 3 + 4  # the full task models and the ablation variants
    assert jobs.get("grpo_stage2") == n_models, jobs
    assert {"judge_predict", "eval_metrics", "tables", "figures", "provenance"} <= set(jobs), jobs
    assert not (set(jobs) & (DATA_RULES | {"grpo_stage1", "sft_baseline", "clip_predict", "tiny_clip"})), jobs


@pytest.mark.slow
@DEMO_TIMEOUT
def test_rerun_dpo_recipe_reruns_stage3_generators_only(demo_run):
    """(e) An edited DPO recipe reruns the DPO jobs and what depends on the new generators; no judge training of
    stages 1-2, no data rule, no Table 1-5 metric."""
    recipe = yaml.safe_load((ROOT / "config/recipes/demo_dpo.yaml").read_text())
    recipe["learning_rate"] = 1e-4
    (demo_run / "dpo_lr.yaml").write_text(yaml.safe_dump(recipe))
    cfg = _config_variant(
        demo_run, "cfg_dpo", lambda c: c["stage3"]["dpo"].update(recipe=str(demo_run / "dpo_lr.yaml"))
    )
    jobs = planned(demo_run, cfg)
    assert jobs.get("dpo_train") == 3, jobs
    assert {"t2v_sample", "stage3_judge", "table6"} <= set(jobs), jobs
    assert "t2v_base" not in jobs and "stage3_prompts" not in jobs, jobs
    assert not (set(jobs) & (DATA_RULES | {"grpo_stage1", "grpo_stage2", "sft_baseline", "clip_predict"})), jobs


@pytest.mark.slow
@DEMO_TIMEOUT
def test_rerun_report_option_reruns_only_report_rules(demo_run):
    """(b) A presentation option (figure resolution) reruns the figures and nothing else."""
    cfg = _config_variant(demo_run, "cfg_dpi", lambda c: c["report"].update(dpi=200))
    assert planned(demo_run, cfg) == {"figures": 1, "all": 1}


@pytest.mark.slow
@DEMO_TIMEOUT
def test_rerun_nothing_changed_plans_nothing(demo_run):
    """(c) No change: nothing to do (also after the dry runs above)."""
    assert planned(demo_run, ROOT / "config" / "demo.yaml") == {}


@pytest.mark.slow
@DEMO_TIMEOUT
def test_rerun_metrics_code_edit_reruns_metrics_and_report_only(demo_run):
    """(d) Editing a metrics module reruns every metrics job and the report, never a GPU stage.

    Training and prediction code is not a rule input on purpose (a refactor must not retrain a 7B judge): after
    such an edit, rerun deliberately, e.g. `snakemake -R grpo_stage2` (README, "Rerunning a stage").
    """
    # A real edit: Snakemake keeps checksums of small inputs, so an mtime-only touch would (rightly) rerun nothing.
    src = ROOT / "src/vqinsight/metrics.py"
    st, original = src.stat(), src.read_bytes()
    try:
        src.write_bytes(original + b"# rerun-semantics test probe: safe to delete\n")
        jobs = planned(demo_run, ROOT / "config" / "demo.yaml")
    finally:
        src.write_bytes(original)
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert set(jobs) == {"eval_metrics", "tables", "tables_html", "figures", "provenance", "all"}, jobs
    assert jobs["eval_metrics"] == len(list((demo_run / "results/demo/eval/metrics").glob("*/*.meta.json")))


@pytest.mark.slow
@DEMO_TIMEOUT
def test_html_report_bundles_tables_figures_and_provenance(demo_run):
    """`snakemake --report` works on the finished demo and carries the figures, tables and provenance table."""
    html = demo_run / "report.html"
    smk("--configfile", str(ROOT / "config" / "demo.yaml"), "--report", str(html), cwd=demo_run)
    text = html.read_text(errors="replace")
    for needle in ("tau_epsilon.png", "table1.csv", "table1.html", "All tables on one page", "provenance.csv"):
        assert needle in text, needle
    prov = pl.read_csv(demo_run / "results/demo/provenance.csv")
    assert prov.height >= 40 and prov["git_sha"].null_count() < prov.height


def test_slurm_profile_dry_run_from_repo_root_lists_every_rule_with_resources():
    """`snakemake --profile slurm all -n`, typed from the repo root on the paper config, resolves the real profile."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(
        [SNAKEMAKE, "--profile", "slurm", "all", "-n"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    for rule in ("download", "manifest", "grpo_stage1", "grpo_stage2", "judge_predict", "eval_metrics", "tables"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule
    assert "gpu=8" in out, "the training rules request 8 GPUs (their partitions: tests/workflow/test_slurm_profile.py)"


# ---------------------------------------------------------------------------------------------------------------
# Determinism (issue 8): a job rerun from the command line in its meta.json reproduces its outputs byte for byte.
# ---------------------------------------------------------------------------------------------------------------


def _rerun_job(demo_run: Path, meta: Path, module: str, replace: dict[str, Path]) -> None:
    """Run the job recorded in meta.json again (same arguments, outputs redirected by `replace`) in the CPU kernels it
    recorded (`device.cpu_kernels`: the demo's portable float order, which the Snakefile set for the job)."""
    from vqinsight.cpu_kernels import ORDER_VARIABLES

    record = json.loads(meta.read_text())
    argv = record["argv"][1:]
    for i, arg in enumerate(argv[:-1]):
        if arg in replace:
            argv[i + 1] = str(replace[arg])
    kernels = record["device"]["cpu_kernels"]
    assert kernels, f"{meta}: the job recorded no CPU kernels (the demo runs the portable order)"
    env = {k: v for k, v in os.environ.items() if k not in ORDER_VARIABLES} | kernels | {"OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", module, *argv], cwd=demo_run, env=env, capture_output=True,
                       text=True, timeout=900, check=False)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]


@pytest.mark.slow
@DEMO_TIMEOUT
def test_determinism_rerun_jobs_reproduce_models_predictions_and_metrics(demo_run, tmp_path):
    """GRPO (stage 3's first judge refinement), Diffusion-DPO (round 1), judge predictions and metrics."""
    res = demo_run / "results/demo"
    judge = res / "stage3/judges/united_r1/model"
    _rerun_job(demo_run, judge / "meta.json", "vqinsight.grpo",
               {"--output-dir": tmp_path / "judge", "--checkpoint-dir": tmp_path / "judge_ckpt"})  # fmt: skip
    assert (tmp_path / "judge/model.safetensors").read_bytes() == (judge / "model.safetensors").read_bytes()
    gen = res / "stage3/generators/united_r1"
    out = {"--out": tmp_path / "gen", "--checkpoint-dir": tmp_path / "gen_ckpt", "--log-dir": tmp_path / "log"}
    _rerun_job(demo_run, gen / "meta.json", "vqinsight.dpo.train", out)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "gen" / unet).read_bytes() == (gen / unet).read_bytes()
    pred = res / "eval/predictions/sft/monetbench.jsonl"
    _rerun_job(demo_run, Path(f"{pred}.meta.json"), "vqinsight.judge", {"--out": tmp_path / "pred.jsonl"})
    assert (tmp_path / "pred.jsonl").read_bytes() == pred.read_bytes()
    metrics = res / "eval/metrics/sft/monetbench.json"
    _rerun_job(demo_run, metrics.with_suffix(".meta.json"), "vqinsight.evaluate", {"--out": tmp_path / "m.json"})
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(metrics.read_text())


# ---------------------------------------------------------------------------------------------------------------
# Chaos (issue 8): SIGKILL a GRPO training job, a DPO job and a judge job of the finished demo mid-run, rerun the
# DAG, and compare every table with the uninterrupted run's. Runs last: it leaves the demo complete again.
# ---------------------------------------------------------------------------------------------------------------


def _demo_cmd(cwd: Path, *targets: str) -> list[str]:
    # targets before --configfile, which takes several values
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(cwd), "--cores", "2", "--rerun-incomplete",
            *targets, "--configfile", str(ROOT / "config" / "demo.yaml")]  # fmt: skip


def _kill_when(cwd: Path, targets: list[str], ready, timeout: float = 600.0) -> bool:
    """Run Snakemake on targets; SIGKILL its whole process group (Snakemake and the job) once ready() holds.
    Returns False when the jobs finished before ready() held (nothing was killed)."""
    import signal
    import time

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with open(cwd / "chaos.log", "a") as log:
        p = subprocess.Popen(_demo_cmd(cwd, *targets), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
        t0 = time.monotonic()
        try:
            while p.poll() is None and time.monotonic() - t0 < timeout:
                if ready():
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=60)
                    time.sleep(1.0)
                    # nothing of the killed job may survive (it would keep writing into the rerun's files)
                    assert not _jobs_in(cwd), f"processes survived the kill: {_jobs_in(cwd)}"
                    return True
                time.sleep(0.2)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=60)
    assert p.returncode == 0 or time.monotonic() - t0 >= timeout, (cwd / "chaos.log").read_text()[-3000:]
    return False


def _jobs_in(cwd: Path) -> list[str]:
    """Command lines of the live processes working in cwd (Snakemake and its jobs)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cwd", "cmdline"]):
        try:
            if proc.info["cwd"] and Path(proc.info["cwd"]).resolve() == cwd.resolve():
                out.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.Error, OSError):
            continue
    return out


def _finish(cwd: Path, *targets: str) -> None:
    smk("--unlock", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=cwd)  # the killed run's lock
    p = subprocess.run(_demo_cmd(cwd, *targets), cwd=cwd, capture_output=True, text=True, timeout=1800, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def _tables(cwd: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((cwd / "results/demo/tables").glob("table*.csv"))}


@pytest.mark.slow
@DEMO_TIMEOUT
def test_chaos_sigkill_training_and_judging_then_rerun_gives_the_same_tables(demo_run):
    import shutil

    res = demo_run / "results/demo"
    before = _tables(demo_run)
    assert len(before) == 6

    # 1. GRPO (stage 3's final judge refinement): killed after its first complete checkpoint
    judge = res / "stage3/judges/united_r2"
    judge_weights = (judge / "model/model.safetensors").read_bytes()
    shutil.rmtree(judge)
    killed = _kill_when(
        demo_run,
        [str(judge.relative_to(demo_run) / "model")],
        lambda: (judge / "checkpoints/checkpoint-10/COMPLETE").exists(),
    )
    assert killed and not (judge / "model").exists()
    _finish(demo_run, str(judge.relative_to(demo_run) / "model"))
    meta = json.loads((judge / "model/meta.json").read_text())
    assert meta["resumed_from"] and int(meta["resumed_from"].rsplit("-", 1)[1]) > 0, meta["resumed_from"]
    # measured: the resumed GRPO run is not bit-identical to the uninterrupted one (the steps after the resume sample
    # other completions), while an uninterrupted rerun is; its downstream results are compared apart, below
    resumed_grpo_identical = (judge / "model/model.safetensors").read_bytes() == judge_weights

    # 2. Diffusion-DPO (round 2 of the w/o-UF chain): killed after its first complete checkpoint
    gen, ckpt = res / "stage3/generators/no_uf_r2", res / "stage3/checkpoints/no_uf_r2"
    unet_weights = (gen / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    shutil.rmtree(gen)
    shutil.rmtree(ckpt)
    killed = _kill_when(demo_run, [str(gen.relative_to(demo_run))], lambda: any(ckpt.glob("step-*/COMPLETE")))
    assert killed and not gen.exists()
    _finish(demo_run, str(gen.relative_to(demo_run)))
    summary = json.loads((gen / "dpo_summary.json").read_text())
    assert summary["resumed_from"] and "step-" in summary["resumed_from"], summary
    assert (gen / "unet/diffusion_pytorch_model.safetensors").read_bytes() == unet_weights, (
        "resumed DPO = uninterrupted"
    )
    log_rows = (res / "stage3/curves/no_uf_r2/train_log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in log_rows] == list(range(1, summary["steps"] + 1)), "each step logged once"

    # 3. judge predictions: killed once some batches are on disk; the rerun skips them
    pred = res / "eval/predictions/vqinsight/monetbench.jsonl"
    partial = pred.with_name(pred.name + ".partial")
    pred.unlink()

    def some_lines() -> bool:
        return partial.exists() and partial.read_text().count("\n") >= 32

    assert _kill_when(demo_run, [str(pred.relative_to(demo_run))], some_lines)
    _finish(demo_run)  # everything downstream, up to the tables
    assert json.loads(pred.with_name(pred.name + ".meta.json").read_text())["resumed_with"] >= 32

    # CPU, fixed seeds: the resumed DPO job and the resumed judge job reproduce the uninterrupted results exactly;
    # only what the resumed GRPO judge feeds may differ: Table 1/5 rows of the trained judge (its comparison rows
    # use that judge) and Table 6's win rates (judged by it). Every other value is byte-identical.
    after = _tables(demo_run)
    assert after.keys() == before.keys()

    def cells(text: str) -> dict[tuple[str, ...], str]:
        rows = [r.split(",") for r in text.splitlines()[1:]]
        return {tuple(r[:3] + r[4:5]): r[-1] for r in rows}

    downstream = {("table1", "vqinsight"), ("table5", "full")}  # the trained judge's rows
    for name in before:
        b, a = cells(before[name]), cells(after[name])
        assert a.keys() == b.keys(), name
        for key in b:
            table, _, system, column = key
            if resumed_grpo_identical or not ((table, system) in downstream or column == "winrate_vs_g0"):
                assert a[key] == b[key], f"{name} {key}: {b[key]} -> {a[key]} after kill + rerun"
    again = smk("-n", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=demo_run)
    assert "Nothing to be done" in again.stdout + again.stderr
