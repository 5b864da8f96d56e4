# Evaluation: every system (the trained judge, its ablations, the baselines) predicts on every benchmark it
# covers (config eval.benchmarks / baselines / ablations), then one metrics file per (system, benchmark).
#
#   <results>/eval/predictions/<system>/<benchmark>.jsonl   one line per judgment (reasoning kept)
#   <results>/eval/metrics/<system>/<benchmark>.json        metrics (+ .points.csv for the figures)


if any(v["type"] == "sft" for v in BASELINES.values()):

    # Qwen-SFT: the base model finetuned with TRL's SFTTrainer on the same training data as each task model.
    rule sft_baseline:
        input:
            recipe=repo_file(sft_spec()["recipe"]),
            manifests=stage2_manifests,
            eval=stage2_eval_manifests,
            caches=stage2_caches,
            base=base_model_input,
        output:
            model=directory(f"{RESULTS}/baselines/sft/{{task_model}}/model"),
        log:
            f"{LOGS}/eval/sft_{{task_model}}.log",
        benchmark:
            f"{LOGS}/eval/sft_{{task_model}}.benchmark.tsv"
        priority: PRIORITY_TRAIN
        conda:
            "../environment.yml"
        threads: GRPO["threads"]
        resources:
            gpu=GRPO["gpus"],
            # as for GRPO: each process holds the 7B checkpoint in host memory before ZeRO-3 shards it
            mem_mb=max(16000, 64000 * GRPO["gpus"]),
            # SFT has no rollouts: 3 epochs take a fraction of GRPO's time; per attempt, a retry resumes from the
            # newest complete checkpoint
            runtime=24 * 60,
        params:
            launch=lambda wildcards, resources: launcher(wildcards, resources).replace(
                "vqinsight.grpo", "vqinsight.baselines.sft"
            ),
            base=config["model"]["base"],
            tasks=stage2_tasks,
            checkpoints=f"{RESULTS}/baselines/sft/{{task_model}}/checkpoints",
            seed=config["seed"],
            media=media_args,
            trust=trust_flag,
        shell:
            "{params.launch} --recipe {input.recipe:q} --model {params.base:q} --manifests {input.manifests:q} "
            "--tasks {params.tasks} --eval-manifests {input.eval:q} --output-dir {output.model:q} "
            "--checkpoint-dir {params.checkpoints:q} --seed {params.seed} --threads {threads} {params.trust} "
            "{params.media} > {log:q} 2>&1"


if any(v.get("model") == "tiny" for v in BASELINES.values()):

    # Demo stand-in for openai/clip-vit-base-patch16 (no weights offline): a tiny random CLIP, same classes.
    rule tiny_clip:
        output:
            model=directory(f"{RESULTS}/models/tiny_clip"),
        log:
            f"{LOGS}/eval/tiny_clip.log",
        conda:
            "../environment.yml"
        resources:
            mem_mb=2000,  # demo only: a random CLIP of a few MB
            runtime=10,
        params:
            seed=config["seed"],
        shell:
            "python -m vqinsight.models.tiny_clip --out {output.model:q} --seed {params.seed} > {log:q} 2>&1"


rule judge_predict:
    input:
        model=judge_model_input,
        manifest=bench_manifest,
        caches=bench_caches,
    output:
        f"{RESULTS}/eval/predictions/{{system}}/{{benchmark}}.jsonl",
    log:
        f"{LOGS}/eval/predict_{{system}}_{{benchmark}}.log",
    benchmark:
        f"{LOGS}/eval/predict_{{system}}_{{benchmark}}.benchmark.tsv"
    wildcard_constraints:
        system="|".join(JUDGE_SYSTEMS) or "NONE",
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=min(1, GRPO["gpus"]),
        # the 7B checkpoint is loaded into host memory (15 GB bf16) on its way to the GPU, and the frame decoding
        # workers hold a batch of 16-frame videos
        mem_mb=64000 if GRPO["gpus"] else 8000,
        # up to 7k videos (LSVQ test) with reasoning of up to 1,024 tokens; rows already written are skipped on a
        # retry (.partial), and attempt n gets n times the time
        runtime=lambda wildcards, attempt: 12 * 60 * attempt,
    params:
        model=judge_model,
        judge=judge_args,
        media=media_args,
        trust=trust_flag,
    shell:
        "python -m vqinsight.judge --model {params.model:q} --manifest {input.manifest:q} --out {output:q} "
        "{params.judge} --threads {threads} {params.trust} {params.media} > {log:q} 2>&1"


rule clip_predict:
    input:
        model=judge_model_input,
        manifest=bench_manifest,
        caches=bench_caches,
    output:
        f"{RESULTS}/eval/predictions/{{system}}/{{benchmark}}.jsonl",
    log:
        f"{LOGS}/eval/predict_{{system}}_{{benchmark}}.log",
    wildcard_constraints:
        system="|".join(CLIP_SYSTEMS) or "NONE",
    conda:
        "../environment.yml"
    resources:
        gpu=min(1, GRPO["gpus"]),
        mem_mb=16000,  # CLIP ViT-B/16 (0.6 GB) and the decoded frames of a batch
        runtime=lambda wildcards, attempt: 4 * 60 * attempt,  # one forward per frame; attempt n gets n times
    params:
        model=judge_model,
        metric=lambda wildcards: SYSTEMS[wildcards.system]["type"],
        task=lambda wildcards: BENCHMARKS[wildcards.benchmark]["task"],
        split=lambda wildcards: BENCHMARKS[wildcards.benchmark]["split"],
        media=media_args,
    shell:
        "python -m vqinsight.baselines.clip --metric {params.metric} --model {params.model:q} "
        "--manifest {input.manifest:q} --task {params.task} --split {params.split} --out {output:q} "
        "{params.media} > {log:q} 2>&1"


rule eval_metrics:
    input:
        predictions=f"{RESULTS}/eval/predictions/{{system}}/{{benchmark}}.jsonl",
        code=EVAL_CODE,
    output:
        metrics=f"{RESULTS}/eval/metrics/{{system}}/{{benchmark}}.json",
        points=f"{RESULTS}/eval/metrics/{{system}}/{{benchmark}}.points.csv",
        meta=f"{RESULTS}/eval/metrics/{{system}}/{{benchmark}}.meta.json",
    log:
        f"{LOGS}/eval/metrics_{{system}}_{{benchmark}}.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=4000,  # one predictions file (at most ~14k rows) and bootstrap resamples of its metrics
        runtime=60,
    params:
        args=metrics_args,
    shell:
        "python -m vqinsight.evaluate --predictions {input.predictions:q} {params.args} --out {output.metrics:q} "
        "> {log:q} 2>&1"


rule eval:
    input:
        eval_metrics_files,
