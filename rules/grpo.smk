# Judge training: (demo: tiny model + format warm start) -> GRPO stage 1 (images) -> stage 2 task models (video).
# Checkpoints live beside each model directory (never inside it: Snakemake clears outputs before a job), so a
# rerun of an interrupted job resumes from the newest complete checkpoint.

if BUILD_TINY:

    rule tiny_model:
        output:
            model=directory(f"{RESULTS}/models/tiny"),
        log:
            f"{LOGS}/grpo/tiny_model.log",
        conda:
            "../environment.yml"
        resources:
            mem_mb=2000,  # demo only: a random model of a few MB
            runtime=10,
        params:
            seed=config["model"]["tiny"].get("seed", 0),
            hidden=config["model"]["tiny"].get("hidden", 64),
            layers=config["model"]["tiny"].get("layers", 2),
            vis_hidden=config["model"]["tiny"].get("vis_hidden", 32),
            vis_depth=config["model"]["tiny"].get("vis_depth", 2),
            video_pixels=f"{config['data']['min_pixels']} {config['data']['max_pixels']}",
            image_pixels=f"{config['data']['min_pixels']} {config['data']['image_max_pixels']}",
        shell:
            "python -m vqinsight.models.tiny --out {output.model:q} --seed {params.seed} --hidden {params.hidden} "
            "--layers {params.layers} --vis-hidden {params.vis_hidden} --vis-depth {params.vis_depth} "
            "--video-pixels {params.video_pixels} --image-pixels {params.image_pixels} > {log:q} 2>&1"

    rule demo_base:
        input:
            tiny=f"{RESULTS}/models/tiny",
            manifests=manifest_files(config["model"]["warm_start"]["datasets"]),
            caches=cache_files(config["model"]["warm_start"]["datasets"]),
        output:
            model=directory(config["model"]["base"]),
        log:
            f"{LOGS}/grpo/demo_base.log",
        benchmark:
            f"{LOGS}/grpo/demo_base.benchmark.tsv"
        priority: PRIORITY_CHAIN
        conda:
            "../environment.yml"
        threads: GRPO["threads"]
        resources:
            mem_mb=4000,  # demo only: SFT of the tiny model on the CPU, a few hundred MB
            runtime=60,
        params:
            tasks=" ".join(config["model"]["warm_start"]["tasks"]),
            steps=config["model"]["warm_start"]["steps"],
            batch_size=config["model"]["warm_start"]["batch_size"],
            lr=config["model"]["warm_start"]["lr"],
            answers=warm_start_answers(config["model"]["warm_start"]),
            seed=config["seed"],
            media=media_args,
        shell:
            "python -m vqinsight.grpo.warmstart --base {input.tiny:q} --out {output.model:q} {params.answers} "
            "--manifests {input.manifests:q} --tasks {params.tasks} --steps {params.steps} "
            "--batch-size {params.batch_size} --lr {params.lr} --seed {params.seed} --threads {threads} "
            "{params.media} > {log:q} 2>&1"


rule grpo_stage1:
    input:
        recipe=STAGE1_RECIPE,
        manifests=manifest_files(GRPO["stage1"]["datasets"]),
        eval=manifest_files(GRPO["stage1"].get("eval_datasets", [])),
        caches=cache_files(GRPO["stage1"]["datasets"]),
        base=base_model_input,
    output:
        model=directory(f"{RESULTS}/grpo/stage1/model"),
    log:
        f"{LOGS}/grpo/stage1.log",
    benchmark:
        f"{LOGS}/grpo/stage1.benchmark.tsv"
    priority: PRIORITY_CHAIN
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=GRPO["gpus"],
        # every process loads the 7B checkpoint in bf16 into host memory (15 GB) before ZeRO-3 shards it, plus
        # its data workers' decoded frames: 64 GB per GPU of the job
        mem_mb=max(16000, 64000 * GRPO["gpus"]),
        # KonIQ's 7k images x 3 epochs at 16 prompts per step is ~1,300 steps (tens of s each on 8 GPUs); per attempt,
        # a retry resumes from the newest complete checkpoint
        runtime=48 * 60,
    params:
        launch=launcher,
        base=config["model"]["base"],
        tasks=" ".join(GRPO["stage1"]["tasks"]),
        checkpoints=f"{RESULTS}/grpo/stage1/checkpoints",
        seed=config["seed"],
        media=media_args,
        trust=trust_flag,
    shell:
        "{params.launch} --recipe {input.recipe:q} --model {params.base:q} --manifests {input.manifests:q} "
        "--tasks {params.tasks} --eval-manifests {input.eval:q} --output-dir {output.model:q} "
        "--checkpoint-dir {params.checkpoints:q} --seed {params.seed} --threads {threads} {params.trust} "
        "{params.media} > {log:q} 2>&1"


if "format_warm_start" in GRPO["stage2"]:

    rule stage2_format:
        input:
            model=stage2_start_input,
            manifests=stage2_manifests,
            caches=stage2_caches,
        output:
            model=directory(f"{RESULTS}/grpo/stage2/{{task_model}}/format_from_{{start}}/init"),
        log:
            f"{LOGS}/grpo/stage2_format_{{task_model}}_from_{{start}}.log",
        priority: stage2_priority
        conda:
            "../environment.yml"
        threads: GRPO["threads"]
        resources:
            mem_mb=4000,  # a format-only SFT warm start, configured for the tiny demo model only
            runtime=60,
        params:
            start=stage2_start,
            tasks=stage2_tasks,
            steps=GRPO["stage2"]["format_warm_start"]["steps"],
            batch_size=GRPO["stage2"]["format_warm_start"]["batch_size"],
            lr=GRPO["stage2"]["format_warm_start"]["lr"],
            answers=warm_start_answers(GRPO["stage2"]["format_warm_start"]),
            seed=config["seed"],
            media=media_args,
        shell:
            "python -m vqinsight.grpo.warmstart --base {params.start:q} --out {output.model:q} {params.answers} "
            "--manifests {input.manifests:q} --tasks {params.tasks} --steps {params.steps} "
            "--batch-size {params.batch_size} --lr {params.lr} --seed {params.seed} --threads {threads} "
            "{params.media} > {log:q} 2>&1"


# One rule for the full model and every ablation (`variant`: full, or an eval.ablations entry that changes the
# init model or the recipe), so ablations are config variants, not copies.
rule grpo_stage2:
    input:
        recipe=STAGE2_RECIPE,
        init=stage2_init_input,
        manifests=stage2_manifests,
        eval=stage2_eval_manifests,
        caches=stage2_caches,
    output:
        model=directory(f"{RESULTS}/grpo/stage2/{{task_model}}/{{variant}}/model"),
    log:
        f"{LOGS}/grpo/stage2_{{task_model}}_{{variant}}.log",
    benchmark:
        f"{LOGS}/grpo/stage2_{{task_model}}_{{variant}}.benchmark.tsv"
    priority: stage2_priority
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=GRPO["gpus"],
        # every process loads the 7B checkpoint in bf16 into host memory (15 GB) before ZeRO-3 shards it, plus
        # its data workers' decoded frames: 64 GB per GPU of the job
        mem_mb=max(16000, 64000 * GRPO["gpus"]),
        # LSVQ's 28k training videos x 3 epochs at 16 prompts per step is ~5,000 steps of 16-frame rollouts (26 s per
        # step measured on one H100, docs/PERFORMANCE.md); per attempt, a retry resumes from the newest checkpoint
        runtime=72 * 60,
    params:
        launch=launcher,
        init=stage2_init,
        override=recipe_override,
        tasks=stage2_tasks,
        checkpoints=f"{RESULTS}/grpo/stage2/{{task_model}}/{{variant}}/checkpoints",
        seed=config["seed"],
        media=media_args,
        trust=trust_flag,
    shell:
        "{params.launch} --recipe {input.recipe:q} {params.override} --model {params.init:q} "
        "--manifests {input.manifests:q} --tasks {params.tasks} --eval-manifests {input.eval:q} "
        "--output-dir {output.model:q} --checkpoint-dir {params.checkpoints:q} --seed {params.seed} "
        "--threads {threads} {params.trust} {params.media} > {log:q} 2>&1"


rule grpo:
    input:
        grpo_models,
