"""The one-GPU smoke run of the paper config: its recipes differ from the paper's only in step counts, and the
replay tool (vqinsight.bench.smoke) orders, runs, skips, kills and resumes jobs as documented."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from vqinsight.bench import smoke

REPO = Path(__file__).resolve().parents[2]
#: keys a smoke recipe may change (dotted paths), per paper recipe
ALLOWED = {
    "stage1": {"trainer.max_steps", "trainer.save_steps", "eval.n"},  # save_steps: the kill-and-resume test
    "sft": {"trainer.max_steps", "eval.n"},
    "dpo": {"max_steps", "save_every"},
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_smoke_recipes_differ_from_the_paper_only_in_step_counts(name):
    paper = _flat(yaml.safe_load((REPO / f"config/recipes/paper_{name}.yaml").read_text()))
    smoke_ = _flat(yaml.safe_load((REPO / f"config/recipes/smoke_{name}.yaml").read_text()))
    changed = {k for k in paper.keys() | smoke_.keys() if paper.get(k, "<absent>") != smoke_.get(k, "<absent>")}
    assert changed == ALLOWED[name]


def test_smoke_overlay_keeps_paper_media_and_judge_settings():
    paper = yaml.safe_load((REPO / "config/config.yaml").read_text())
    over = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    assert set(over["data"]) <= {"workers"}  # frames, pixel budgets, reader: the paper's
    assert "judge" not in over["eval"]  # style, tokens, margin: the paper's
    assert over["grpo"]["stage2"].keys() == {"task_models"}  # the paper's stage-2 recipe
    for tm in paper["grpo"]["stage2"]["task_models"]:
        assert over["grpo"]["stage2"]["task_models"][tm]["recipe"] == {"trainer": {"max_steps": 1}, "eval": {"n": 2}}


DRY = textwrap.dedent(
    """\
    [Sun Dec  6 22:07:58 2026]
    rule train:
        input: data/a.txt, cfg.yaml
        output: out/model
        log: logs/train.log
        jobid: 3
        wildcards: name=x, variant=full
        resources: tmpdir=/tmp, gpu=1, runtime=60
    Shell command: python train.py > logs/train.log 2>&1

    [Sun Dec  6 22:07:58 2026]
    rule prep:
        output: data/a.txt
        log: logs/prep.log
        jobid: 7
        resources: tmpdir=/tmp
    Shell command: echo a > data/a.txt

    [Sun Dec  6 22:07:58 2026]
    rule judge:
        input: out/model, data/a.txt
        output: pred/x.jsonl
        log: logs/judge.log
        jobid: 1
        wildcards: system=ours
        resources: tmpdir=/tmp, gpu=1
    Shell command: python judge.py

    [Sun Dec  6 22:07:58 2026]
    localrule all:
        input: pred/x.jsonl
        jobid: 0
    """
)


def test_plan_parses_commands_and_orders_by_dependencies():
    jobs = smoke.order(smoke.parse_dry_run(DRY))
    assert [j["rule"] for j in jobs] == ["prep", "train", "judge"]  # 'all' has no command
    train = next(j for j in jobs if j["rule"] == "train")
    assert train["wildcards"] == {"name": "x", "variant": "full"} and train["gpu"] == 1
    assert train["shell"] == "python train.py > logs/train.log 2>&1"
    assert train["needs"] == [7]
    judge = next(j for j in jobs if j["rule"] == "judge")
    assert judge["needs"] == [3, 7]  # reads a file under the directory output out/model


def test_schedule_puts_priority_jobs_and_their_ancestors_first():
    jobs = smoke.order(smoke.parse_dry_run(DRY))
    assert smoke.schedule(jobs, [("judge", {"system": "ours"})]) == [7, 3, 1]
    assert smoke.schedule(jobs, [("train", {"variant": "full"})]) == [7, 3, 1]
    assert smoke.schedule(jobs, [("train", {"variant": "other"})]) == [7, 3, 1]  # no match: dependency order


def _plan(tmp_path: Path, jobs: list[dict]) -> Path:
    for j in jobs:
        j.setdefault("wildcards", {})
        j.setdefault("gpu", 0)
        j.setdefault("input", [])
    jobs = smoke.order(jobs)
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"config": "test", "jobs": jobs, "schedule": smoke.schedule(jobs, [])}))
    return p


def _run(tmp_path, plan, *extra):
    report = tmp_path / "report.json"
    assert smoke.main(["run", "--plan", str(plan), "--report", str(report), *extra]) == 0
    return {j["rule"]: j for j in json.loads(report.read_text())["jobs"]}


def test_run_records_jobs_skips_done_and_downstream_of_a_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = _plan(
        tmp_path,
        [
            {"rule": "a", "jobid": 1, "output": ["o/a"], "log": ["l/a.log"],
             "shell": "echo hi > o/a; echo ok > l/a.log"},
            {"rule": "b", "jobid": 2, "input": ["o/a"], "output": ["o/b"], "log": ["l/b.log"],
             "shell": "echo boom > l/b.log; exit 3"},
            {"rule": "c", "jobid": 3, "input": ["o/b"], "output": ["o/c"], "log": ["l/c.log"], "shell": "touch o/c"},
            {"rule": "d", "jobid": 4, "output": ["o/d"], "log": ["l/d.log"], "shell": "touch o/d"},
        ],
    )  # fmt: skip
    Path("o").mkdir()
    Path("o/d").write_text("old")
    jobs = _run(tmp_path, plan)
    assert jobs["a"]["status"] == "ok" and jobs["a"]["rc"] == 0 and jobs["a"]["wall_s"] >= 0
    assert jobs["b"]["status"] == "failed" and jobs["b"]["rc"] == 3 and jobs["b"]["log_tail"] == ["boom"]
    assert jobs["c"]["status"] == "skipped: an input job failed"
    assert jobs["d"]["status"] == "done before"
    assert not Path("o/c").exists()


def test_run_stops_starting_jobs_at_the_deadline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = _plan(
        tmp_path,
        [
            {"rule": "a", "jobid": 1, "output": ["a"], "log": ["a.log"], "shell": "touch a"},
            {"rule": "b", "jobid": 2, "output": ["b"], "log": ["b.log"], "shell": "touch b"},
        ],
    )
    jobs = _run(tmp_path, plan, "--deadline-s", "0")
    assert jobs["a"]["status"] == jobs["b"]["status"] == "not run: deadline"


def test_run_kills_a_job_after_its_checkpoint_and_reruns_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a "trainer": resumes from ckpt/step-1 if present (says so), else writes it and then hangs
    script = (
        "if [ -f ckpt/step-1/COMPLETE ]; then echo resuming from ckpt/step-1 > t.log; mkdir -p out; touch out/m; "
        "else mkdir -p ckpt/step-1 && touch ckpt/step-1/COMPLETE && echo started > t.log && sleep 60; fi"
    )
    plan = _plan(tmp_path, [{"rule": "train", "jobid": 1, "output": ["out"], "log": ["t.log"], "shell": script}])
    jobs = _run(tmp_path, plan, "--kill", "train", "--kill-glob", "ckpt/*/COMPLETE")
    job = jobs["train"]
    assert job["killed_run"]["killed"] == "checkpoint" and job["killed_run"]["wall_s"] < 30
    assert job["status"] == "ok" and job["resumed"] is True and Path("out/m").exists()


def test_summary_keeps_the_call_that_ran_each_job():
    def job(jid, status, **kw):
        return {"jobid": jid, "rule": f"r{jid}", "wildcards": {}, "gpu": 1, "status": status, **kw}

    mem = {"peak_gpu_proc_gib": 9.5, "peak_gpu_device_gib": 20.0, "concurrent": 2}
    first = {"config": "c", "jobs": [job(1, "ok", wall_s=3.0, **mem), job(2, "not run: deadline")]}
    second = {"config": "c", "jobs": [job(1, "done before"), job(2, "ok", wall_s=4.0, peak_gpu_proc_gib=1.0)]}
    rep = smoke.merge([first, second])
    got = {j["jobid"]: (j["status"], j.get("call"), j.get("wall_s")) for j in rep["jobs"]}
    assert got == {1: ("ok", 0, 3.0), 2: ("ok", 1, 4.0)}
    table = smoke.markdown(rep)
    assert "| r1  | ok | 3.0 | 9.5 / 20.0 | 2 |" in table and "| r2  | ok | 4.0 | 1.0 / None | 0 |" in table


def test_run_does_not_start_a_job_whose_inputs_are_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = _plan(tmp_path, [{"rule": "a", "jobid": 1, "input": ["nope"], "output": ["a"], "log": ["a.log"],
                             "shell": "touch a"}])  # fmt: skip
    assert _run(tmp_path, plan)["a"]["status"] == "not run: inputs missing (nope)"
    assert not Path("a").exists()


def test_smoke_overlay_merged_onto_the_paper_config_validates():
    from snakemake.utils import update_config

    from vqinsight.config import validate_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config/smoke.yaml").read_text()))  # what --configfile a b does
    validate_config(config, REPO / "config/schema.yaml", source="config.yaml + smoke.yaml")
    assert config["model"]["base"] == "results/smoke/models/Qwen2.5-VL-3B-Instruct"
    assert config["datasets"]["lsvq"]["source"] == "synthetic" and config["data"]["nframes"] == 16


def _spans(tmp_path: Path) -> dict[str, tuple[float, float]]:
    """(start, end) of each job that wrote ``t/<name>`` with ``date +%s.%N`` at its start and end."""
    out = {}
    for f in (tmp_path / "t").iterdir():
        a, b = (float(x) for x in f.read_text().split())
        out[f.name] = (a, b)
    return out


def _timed(name: str, secs: float) -> str:
    return f"mkdir -p t && date +%s.%N > t/{name} && sleep {secs} && date +%s.%N >> t/{name} && touch o{name}"


def test_run_packs_gpu_jobs_by_their_memory_estimates_and_caps_the_job_count(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(smoke.replay, "GPU_GIB", {"big": 60, "small": 12})
    plan = _plan(
        tmp_path,
        [
            {"rule": "big", "jobid": 1, "gpu": 1, "output": ["o1"], "log": ["1.log"], "shell": _timed("1", 1.5)},
            {"rule": "big", "jobid": 2, "gpu": 1, "output": ["o2"], "log": ["2.log"], "shell": _timed("2", 0.5)},
            {"rule": "small", "jobid": 3, "gpu": 1, "output": ["o3"], "log": ["3.log"], "shell": _timed("3", 0.5)},
            {"rule": "cpu", "jobid": 4, "output": ["o4"], "log": ["4.log"], "shell": _timed("4", 0.5)},
        ],
    )
    jobs = _run(tmp_path, plan, "--max-jobs", "3", "--gpu-budget-gib", "76")
    assert all(j["status"] == "ok" for j in jobs.values())
    s = _spans(tmp_path)
    # job 2 (60 GiB) waits for job 1 (60 + 60 > 76); job 3 behind it fits beside job 1 (60 + 12) and starts;
    # the CPU job runs beside job 1
    assert s["2"][0] >= s["1"][1] and s["3"][0] < s["1"][1]
    assert s["4"][0] < s["1"][1] and jobs["cpu"]["concurrent"] >= 1
    jobs = _run(tmp_path, plan, "--max-jobs", "3", "--gpu-budget-gib", "76")
    assert {j["status"] for j in jobs.values()} == {"done before"}


def test_run_kills_a_job_at_its_time_limit_and_skips_what_needs_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = _plan(
        tmp_path,
        [
            {
                "rule": "slow",
                "jobid": 1,
                "output": ["o1"],
                "log": ["1.log"],
                "shell": "echo started > 1.log; sleep 30",
            },
            {"rule": "next", "jobid": 2, "input": ["o1"], "output": ["o2"], "log": ["2.log"], "shell": "touch o2"},
        ],
    )
    jobs = _run(tmp_path, plan, "--job-timeout-s", "1")
    assert jobs["slow"]["status"] == "failed" and jobs["slow"]["killed"] == "timeout"
    assert jobs["slow"]["wall_s"] < 10 and jobs["slow"]["log_tail"] == ["started"]
    assert jobs["next"]["status"] == "skipped: an input job failed"


def test_run_links_checkpoint_dirs_elsewhere_and_prunes_them_after_success(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = "mkdir -p ck/a/step-1 && head -c 2048 /dev/zero > ck/a/step-1/w && mkdir -p out && touch out/m"
    shell = f": --checkpoint-dir ck/a && {script}"  # the trainer's argument names the directory
    plan = _plan(tmp_path, [{"rule": "train", "jobid": 1, "output": ["out"], "log": ["t.log"], "shell": shell}])
    jobs = _run(tmp_path, plan, "--ckpt-root", str(tmp_path / "shm"), "--prune-checkpoints")
    job = jobs["train"]
    assert job["status"] == "ok" and Path("ck/a").is_symlink()
    assert Path("ck/a").resolve() == (tmp_path / "shm" / "ck_a").resolve()
    assert job["checkpoint_bytes"] == 2048 and not (tmp_path / "shm" / "ck_a").exists()


def test_plan_adds_the_model_writes_as_jobs_that_loaders_wait_for(tmp_path):
    dry = tmp_path / "dry.txt"
    # the judge's weights are a rule input (as the CLIP model is); the generator's only appear in the command
    text = DRY.replace("input: data/a.txt, cfg.yaml", "input: data/a.txt, m/Qwen2.5-VL-3B-Instruct")
    text = text.replace("python judge.py", "python judge.py --lora m/T2V-Turbo-MS/unet_lora.pt --x m/clip-vit-base")
    dry.write_text(text)
    out = tmp_path / "plan.json"
    assert smoke.main(["plan", "--dry-run", str(dry), "--out", str(out), "--models-root", "m"]) == 0
    plan = json.loads(out.read_text())
    jobs = {j["rule"]: j for j in plan["jobs"]}
    assert jobs["train"]["needs"] == [-1, 7]
    assert jobs["judge"]["needs"] == [-2, 3, 7]  # not -3: m/clip-vit-base is another path
    models = {j["jobid"]: j for j in plan["jobs"] if j["rule"] == "smoke_models"}
    assert models[-2]["output"] == ["m/text-to-video-ms-1.7b", "m/T2V-Turbo-MS/unet_lora.pt"]
    assert "--only t2v" in models[-2]["shell"] and models[-1]["gpu"] == 1
    assert plan["schedule"].index(-1) < plan["schedule"].index(3)


def test_run_takes_an_empty_output_directory_for_missing(tmp_path, monkeypatch):
    """The dry run needs the model directories to exist; left empty, the job that writes them still runs."""
    monkeypatch.chdir(tmp_path)
    Path("m/vlm").mkdir(parents=True)
    plan = _plan(
        tmp_path,
        [
            {"rule": "models", "jobid": 1, "output": ["m/vlm"], "log": ["1.log"],
             "shell": "mkdir -p m/vlm && echo {} > m/vlm/config.json"},
            {"rule": "judge", "jobid": 2, "input": ["m/vlm"], "output": ["p"], "log": ["2.log"], "shell": "touch p"},
        ],
    )  # fmt: skip
    jobs = _run(tmp_path, plan)
    assert jobs["models"]["status"] == jobs["judge"]["status"] == "ok"
    assert Path("m/vlm/config.json").is_file()


def _smoke_config() -> dict:
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config/smoke.yaml").read_text()))
    return config


def test_smoke_comparison_held_out_sets_keep_rows_after_ties_are_dropped(tmp_path):
    """The first GPU run died in the SFT baseline: the smoke MonetBench drew 2 pairs, both ties, and the held-out
    selection (ties dropped, as in training) was empty. Every comparison held-out set of the smoke config must keep
    a row once its ties are dropped."""
    from vqinsight.data import manifest
    from vqinsight.data.fetch import fetch
    from vqinsight.records import select_rows

    config = _smoke_config()
    eval_sets = {
        ds
        for tm in config["grpo"]["stage2"]["task_models"].values()
        if "comparison" in tm["tasks"]
        for ds in tm.get("eval_datasets", [])
    }
    assert eval_sets, "no comparison held-out dataset in the smoke config"
    for ds in sorted(eval_sets):
        raw, out = tmp_path / "raw" / ds, tmp_path / f"{ds}.parquet"
        fetch(ds, raw, config["datasets"][ds])
        args = ["--dataset", ds, "--raw-dir", str(raw), "--out", str(out), "--meta", str(tmp_path / "meta.json")]
        args += ["--quarantine", str(tmp_path / f"{ds}.csv"), "--scale", "1", "5", "--on-bad-input", "fail"]
        assert manifest.main([*args, "--reader", "pyav", "--workers", "1"]) == 0
        assert select_rows([out], ["comparison", "vqa"], "test").height >= 1, ds


@pytest.mark.slow
def test_tiny_scale_models_have_the_paper_layout_and_load_as_the_jobs_load_them(tmp_path):
    """``models --scale tiny`` (the CPU replay of the smoke DAG) writes the paper scale's directories and files, and
    the jobs' loaders read them: the judge through the project's loader, the generator through ``t2v_base``'s
    conversion (the LoRA list in T2V-Turbo's order for the tiny student), CLIP through transformers."""
    import torch
    from transformers import CLIPModel

    from vqinsight.models.load import load_model_and_processor
    from vqinsight.t2v.convert import convert

    root = tmp_path / "m"
    made = smoke.write_models(root, scale="tiny")
    assert set(made) == {"vlm", "t2v", "clip"} and made["vlm"]["params"] < 10**6
    vlm = root / "Qwen2.5-VL-3B-Instruct"
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "processor_config.json"):
        assert (vlm / name).is_file(), name
    assert json.loads((vlm / "config.json").read_text())["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    model, proc = load_model_and_processor(str(vlm))
    assert proc.video_processor.size["longest_edge"] == 100352  # the paper's video pixel budget
    base = root / "text-to-video-ms-1.7b"
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        assert (base / part).is_dir(), part
    out = convert(base, root / "T2V-Turbo-MS" / "unet_lora.pt", tmp_path / "g0")
    assert (out / "unet").is_dir()
    assert isinstance(CLIPModel.from_pretrained(root / "clip-vit-base-patch16", dtype=torch.float32), CLIPModel)
    # existing checkpoints are kept: a second call writes nothing; the other scale is refused, not mixed in
    assert smoke.write_models(root, scale="tiny") == {}
    with pytest.raises(ValueError, match="holds tiny-scale checkpoints"):
        smoke.write_models(root, scale="paper")
    with pytest.raises(ValueError, match="scale must be one of"):
        smoke.write_models(root, scale="huge")


def test_cpu_overlay_moves_every_smoke_path():
    """config/smoke_cpu.yaml keeps the CPU run's models, data, results and logs apart from the GPU smoke run's: no
    path of the merged config is under results/smoke/, and the rest is the smoke config."""
    import copy

    from snakemake.utils import update_config

    from vqinsight.config import validate_config

    smoke_cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(smoke_cfg, yaml.safe_load((REPO / "config/smoke.yaml").read_text()))  # --configfile a b c
    cpu = copy.deepcopy(smoke_cfg)
    update_config(cpu, yaml.safe_load((REPO / "config/smoke_cpu.yaml").read_text()))
    validate_config(cpu, REPO / "config/schema.yaml", source="config.yaml + smoke.yaml + smoke_cpu.yaml")
    flat_smoke, flat_cpu = _flat(smoke_cfg), _flat(cpu)
    moved = {k for k, v in flat_smoke.items() if isinstance(v, str) and "results/smoke/" in v + "/"}
    assert moved and not [k for k, v in flat_cpu.items() if isinstance(v, str) and "results/smoke/" in v + "/"]
    assert cpu["run"] == "smoke_cpu" and cpu["results_dir"] == "results/smoke_cpu"
    changed = {k for k in flat_cpu if flat_cpu[k] != flat_smoke.get(k)}
    assert changed <= moved | {"run", "eval.label"}, changed - moved


def test_plan_passes_the_models_scale_to_the_model_jobs(tmp_path):
    dry = tmp_path / "dry.txt"
    dry.write_text(DRY)
    out = tmp_path / "plan.json"
    args = ["plan", "--dry-run", str(dry), "--out", str(out), "--models-root", "m", "--models-scale", "tiny"]
    assert smoke.main(args) == 0
    shells = [j["shell"] for j in json.loads(out.read_text())["jobs"] if j["rule"] == "smoke_models"]
    assert len(shells) == 3 and all(s.split(">")[0].rstrip().endswith("--scale tiny") for s in shells)
