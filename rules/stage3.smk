# Stage 3, united finetuning (paper Fig. 2, Sec. "United Finetuning"): the judge improves the generator by
# Diffusion-DPO on the pairs it picks, and the generator's new samples refine the judge.
#
# Round r (1..stage3.rounds), chain "united":
#   samples   S_r   = G_{r-1} on the training prompts, N per prompt        samples/<gen>/train/shard<k>/
#   judging         = J_{r-1} on all C(N,2) pairs, both orders              judged/<judge>/<gen>/train.jsonl
#                     (pairing: tournament: only each prompt's max-min tournament pairs, 3N/2-2, round by round)
#   pairs     C_r   = most/least preferred per prompt (Eq. 8)               pairs/<judge>/<gen>.jsonl
#   DPO       G_r   = Diffusion-DPO(G_{r-1}, C_r) (Eq. 9)                    generators/united_r<r>/
#   refine    Ĉ_r   = best of G_r's samples (judged by J_{r-1}) vs C_r's losers
#             J_r   = J_{r-1} trained on Ĉ_r ∪ the comparison data (GRPO)   judges/united_r<r>/model
# J_0 is the stage-2 comparison model, G_0 the base generator (T2V-Turbo, or the demo's tiny one). Chain "no_uf"
# (Table 6's "Ours w/o UF") keeps judging with J_0; its round 1 is the united chain's (identical inputs), so the
# ids (rules/stage3_common.smk) map it there and Snakemake runs it once. Generators are evaluated on held-out prompts: VBench (the
# package on the paper config; the weight-free dimensions on the demo) and the final judge's win rate over G_0.
#
# Stage 3 rules; config, ids and input functions are in rules/stage3_common.smk.


if S3_TINY:

    rule t2v_base:
        output:
            model=directory(generator_path("g0")),
        log:
            f"{LOGS}/stage3/t2v_base.log",
        conda:
            "../environment.yml"
        resources:
            mem_mb=2000,  # demo only: a random generator of a few MB
            runtime=10,
        params:
            seed=S3["generator"]["tiny"].get("seed", 0),
            frames=S3["generator"]["tiny"].get("frames", 8),
            size=" ".join(map(str, S3["generator"]["tiny"].get("size", [64, 64]))),
            steps=S3["generator"]["tiny"].get("steps", 4),
        shell:
            "python -m vqinsight.t2v.tiny --out {output.model:q} --seed {params.seed} --frames {params.frames} "
            "--size {params.size} --steps {params.steps} > {log:q} 2>&1"

else:

    # T2V-Turbo (MS): the released LoRA merged into the ModelScope T2V base once (keys and shapes checked).
    # The weights are read from local paths; where they are weights.hub directories they are inputs, which the
    # models rule downloads first.
    rule t2v_base:
        input:
            weights=weights_input(S3["generator"]["base"]) + weights_input(S3["generator"]["lora"]),
        output:
            model=directory(generator_path("g0")),
        log:
            f"{LOGS}/stage3/t2v_base.log",
        conda:
            "../environment.yml"
        resources:
            # float32 on the CPU: the teacher UNet and the student built from it (1.4 B parameters, 5.7 GB each),
            # the CLIP text encoder (1.4 GB) and VAE, the LoRA's 1,150 tensors, and the safetensors written out
            mem_mb=32000,
            runtime=60,  # loading, one merge pass over 575 layers and writing ~7 GB: minutes
        params:
            # paths inside (or equal to) the downloaded directories that are the inputs: functions, so that the
            # linter does not take them for hard-coded output prefixes
            base=lambda wildcards: S3["generator"]["base"],
            lora=lambda wildcards: S3["generator"]["lora"],
            rank=S3["generator"].get("rank", 32),
        shell:
            "python -m vqinsight.t2v.convert --base {params.base:q} --lora {params.lora:q} --out {output.model:q} "
            "--rank {params.rank} > {log:q} 2>&1"


rule stage3_prompts:
    input:
        manifest=f"{RESULTS}/manifests/{S3['prompts']['dataset']}.parquet",
    output:
        train=f"{S3DIR}/prompts/train.jsonl",
        heldout=f"{S3DIR}/prompts/heldout.jsonl",
    log:
        f"{LOGS}/stage3/prompts.log",
    priority: PRIORITY_STAGE3  # the rounds' first job: at 0 it waited behind the evaluation jobs
    conda:
        "../environment.yml"
    resources:
        mem_mb=16000,  # reads VidProM's manifest (up to 1.7M prompts) to draw 5k + 200 of them
        runtime=30,
    params:
        n_train=S3["prompts"]["train"],
        n_heldout=S3["prompts"]["heldout"],
        seed=config["seed"],
    shell:
        "python -m vqinsight.stage3.prompt_sets --manifest {input.manifest:q} --train {output.train:q} "
        "--heldout {output.heldout:q} --n-train {params.n_train} --n-heldout {params.n_heldout} "
        "--seed {params.seed} > {log:q} 2>&1"


# Videos are written next to the index (not declared), so a failed or preempted job keeps the finished ones and
# its retry samples only the rest; the sampler discards them if the generator or the settings changed.
rule t2v_sample:
    input:
        model=lambda wc: generator_path(wc.gen),
        prompts=f"{S3DIR}/prompts/{{split}}.jsonl",
    output:
        index=f"{S3DIR}/samples/{{gen}}/{{split}}/shard{{shard}}/index.jsonl",
    log:
        f"{LOGS}/stage3/sample_{{gen}}_{{split}}_{{shard}}.log",
    benchmark:
        f"{LOGS}/stage3/sample_{{gen}}_{{split}}_{{shard}}.benchmark.tsv"
    priority: PRIORITY_STAGE3  # each round waits for the previous one: the demo's critical path
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=min(1, S3_GPUS),
        mem_mb=32000 if S3_GPUS else 4000,  # the generator (7 GB float32) loaded on the host, a batch's frames
        # a shard of the paper run: 100 prompts x 10 videos at ~0.3 s each (H100, README "Measured") is minutes;
        # 8 h leaves room for slower GPUs and queueing of the VBench suite's shards. Attempt n gets n times the time
        runtime=lambda wildcards, attempt: 8 * 60 * attempt,
    params:
        n=lambda wc: S3_N[wc.split],
        round=lambda wc: gen_round(wc.gen),
        shards=lambda wc: S3_SHARDS[wc.split],
        batch=S3.get("sample_batch_size", 4),
        seed=config["seed"],
        out=lambda wc, output: str(Path(output.index).parent),
    shell:
        "python -m vqinsight.t2v.sample --model {input.model:q} --prompts {input.prompts:q} --n {params.n} "
        "--round {params.round} --seed {params.seed} --out {params.out:q} --shard {wildcards.shard} "
        "--num-shards {params.shards} --batch-size {params.batch} --threads {threads} > {log:q} 2>&1"


rule stage3_pair_manifest:
    input:
        index=lambda wc: sample_indexes(wc.gen, wc.split),
        code=S3_CODE,
    output:
        f"{S3DIR}/samples/{{gen}}/{{split}}/pairs.parquet",
    log:
        f"{LOGS}/stage3/pair_manifest_{{gen}}_{{split}}.log",
    priority: PRIORITY_STAGE3  # each round waits for the previous one: the demo's critical path
    conda:
        "../environment.yml"
    resources:
        mem_mb=8000,  # 5k prompts x C(10,2) = 225k pairs, both orders: a 450k-row manifest
        runtime=60,
    shell:
        "python -m vqinsight.stage3.pairs manifest --index {input.index:q} --out {output:q} > {log:q} 2>&1"


rule stage3_judge:
    input:
        model=lambda wc: judge_path(wc.judge),
        manifest=f"{S3DIR}/samples/{{gen}}/{{split}}/pairs.parquet",
    output:
        f"{S3DIR}/judged/{{judge}}/{{gen}}/{{split}}.jsonl",
    log:
        f"{LOGS}/stage3/judge_{{judge}}_{{gen}}_{{split}}.log",
    benchmark:
        f"{LOGS}/stage3/judge_{{judge}}_{{gen}}_{{split}}.benchmark.tsv"
    priority: PRIORITY_STAGE3  # each round waits for the previous one: the demo's critical path
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=min(1, S3_GPUS),
        mem_mb=64000 if S3_GPUS else 8000,  # as judge_predict: the 7B judge passes through host memory
        # 450k pair judgments with reasoning on one GPU take days: a retry continues from the rows already written
        # (.partial), and attempt n gets n times the time
        runtime=lambda wildcards, attempt: 12 * 60 * attempt,
    params:
        judge=s3_samples_judge_args,
        media=media_args,
        trust=trust_flag,
    shell:
        "python -m vqinsight.judge --model {input.model:q} --manifest {input.manifest:q} --out {output:q} "
        "{params.judge} --threads {threads} {params.trust} {params.media} > {log:q} 2>&1"


rule stage3_select:
    input:
        index=lambda wc: sample_indexes(wc.gen, "train"),
        predictions=f"{S3DIR}/judged/{{judge}}/{{gen}}/train.jsonl",
        code=S3_CODE,
    output:
        pairs=f"{S3DIR}/pairs/{{judge}}/{{gen}}.jsonl",
        summary=f"{S3DIR}/pairs/{{judge}}/{{gen}}.summary.json",
    log:
        f"{LOGS}/stage3/select_{{judge}}_{{gen}}.log",
    priority: PRIORITY_STAGE3  # each round waits for the previous one: the demo's critical path
    conda:
        "../environment.yml"
    resources:
        mem_mb=8000,  # the 450k verdicts of a round, counted per prompt
        runtime=60,
    params:
        mode=S3_PAIRING,
    shell:
        "python -m vqinsight.stage3.pairs select --index {input.index:q} --predictions {input.predictions:q} "
        "--out {output.pairs:q} --summary {output.summary:q} --mode {params.mode} > {log:q} 2>&1"


rule dpo_train:
    input:
        unpack(dpo_inputs),
        recipe=DPO_RECIPE,
    output:
        model=directory(f"{S3DIR}/generators/{{dpo_gen}}"),
    log:
        f"{LOGS}/stage3/dpo_{{dpo_gen}}.log",
    benchmark:
        f"{LOGS}/stage3/dpo_{{dpo_gen}}.benchmark.tsv"
    priority: PRIORITY_STAGE3  # each round waits for the previous one: the demo's critical path
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=S3_GPUS,
        # each process holds the float32 generator (7 GB) and, for full finetuning, its frozen reference copy
        mem_mb=max(8000, 64000 * S3_GPUS),
        # 1,560 steps (paper_dpo.yaml) at ~0.6 s per pair and step (H100) are hours; per attempt, a retry resumes
        # from the newest complete checkpoint
        runtime=24 * 60,
    params:
        launch=dpo_launcher,
        videodpo=lambda wc: f"--videodpo {shlex.quote(S3['videodpo']['meta'])}" if wc.dpo_gen == "videodpo" else "",
        pairs=lambda wc, input: f"--pairs {shlex.quote(str(input.pairs))}" if input.pairs else "",
        checkpoints=f"{S3DIR}/checkpoints/{{dpo_gen}}",
        curves=f"{S3DIR}/curves/{{dpo_gen}}",
        seed=config["seed"],
    shell:
        "{params.launch} --recipe {input.recipe:q} --model {input.model:q} {params.pairs} {params.videodpo} "
        "--out {output.model:q} --checkpoint-dir {params.checkpoints:q} --log-dir {params.curves:q} "
        "--seed {params.seed} --threads {threads} > {log:q} 2>&1"


rule stage3_refine_data:
    input:
        unpack(refine_inputs),
        code=S3_CODE,
    output:
        f"{S3DIR}/refine/united_r{{r}}.parquet",
    log:
        f"{LOGS}/stage3/refine_data_{{r}}.log",
    priority: PRIORITY_STAGE3  # each round waits for the previous one: the demo's critical path
    conda:
        "../environment.yml"
    resources:
        mem_mb=8000,  # a round's pairs, sample index and verdicts (450k rows)
        runtime=60,
    params:
        seed=config["seed"],
        mode=S3_PAIRING,
    shell:
        "python -m vqinsight.stage3.pairs refine --pairs {input.pairs:q} --index {input.index:q} "
        "--predictions {input.predictions:q} --out {output:q} --dataset united_r{wildcards.r} "
        "--seed {params.seed} --mode {params.mode} > {log:q} 2>&1"


rule stage3_refine_judge:
    input:
        recipe=STAGE2_RECIPE,
        init=lambda wc: judge_path(judge_id("united", int(wc.r))),
        refine=f"{S3DIR}/refine/united_r{{r}}.parquet",
        manifests=manifest_files(S3_REFINE_DATASETS),
        eval=manifest_files(GRPO["stage2"]["task_models"][S3_JUDGE_TM].get("eval_datasets", [])),
        caches=cache_files(S3_REFINE_DATASETS),
    output:
        model=directory(f"{S3DIR}/judges/united_r{{r}}/model"),
    log:
        f"{LOGS}/stage3/refine_judge_{{r}}.log",
    benchmark:
        f"{LOGS}/stage3/refine_judge_{{r}}.benchmark.tsv"
    priority: PRIORITY_STAGE3  # each round waits for the previous one: the demo's critical path
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=GRPO["gpus"],
        mem_mb=max(16000, 64000 * GRPO["gpus"]),  # as grpo_stage2: the 7B judge in host memory per process
        # stage-2 GRPO for one epoch (stage3.refine.recipe) on the refine pairs plus VisionReward; per attempt, a
        # retry resumes from the newest complete checkpoint
        runtime=72 * 60,
    params:
        launch=launcher,
        override=refine_override,
        tasks=" ".join(t for t in GRPO["stage2"]["task_models"][S3_JUDGE_TM]["tasks"]),
        checkpoints=f"{S3DIR}/judges/united_r{{r}}/checkpoints",
        seed=config["seed"],
        media=media_args,
        trust=trust_flag,
    shell:
        "{params.launch} --recipe {input.recipe:q} {params.override} --model {input.init:q} "
        "--manifests {input.refine:q} {input.manifests:q} --tasks {params.tasks} --eval-manifests {input.eval:q} "
        "--output-dir {output.model:q} --checkpoint-dir {params.checkpoints:q} --seed {params.seed} "
        "--threads {threads} {params.trust} {params.media} > {log:q} 2>&1"


# ----------------------------------------------------------------------------- generator evaluation (Table 6)


if VBENCH["mode"] == "demo":

    # The VBench dimensions that need no downloaded weights, computed by our code on the held-out samples.
    rule stage3_vbench:
        input:
            index=lambda wc: sample_indexes(wc.gen, "heldout"),
            code=S3_CODE,
        output:
            f"{S3DIR}/eval/vbench/{{gen}}.json",
        log:
            f"{LOGS}/stage3/vbench_{{gen}}.log",
        conda:
            "../environment.yml"
        resources:
            mem_mb=4000,  # demo only: one dimension computed on the held-out videos' frames
            runtime=30,
        shell:
            "python -m vqinsight.stage3.vbench demo --index {input.index:q} --out {output:q} "
            "--generator {wildcards.gen} > {log:q} 2>&1"

else:

    # The vbench package on VBench's standard prompt suite (5 videos per prompt); it downloads its own weights.
    rule vbench_prompts:
        output:
            f"{S3DIR}/prompts/vbench.jsonl",
        log:
            f"{LOGS}/stage3/vbench_prompts.log",
        conda:
            "../environment.yml"
        resources:
            mem_mb=2000,  # VBench's prompt suite: under a thousand prompts
            runtime=30,
        params:
            full_info=f"--full-info {shlex.quote(VBENCH['full_info'])}" if VBENCH.get("full_info") else "",
        shell:
            "python -m vqinsight.stage3.vbench prompts --out {output:q} {params.full_info} > {log:q} 2>&1"

    rule stage3_vbench:
        input:
            index=lambda wc: sample_indexes(wc.gen, "vbench"),
            code=S3_CODE,
        output:
            f"{S3DIR}/eval/vbench/{{gen}}.json",
        log:
            f"{LOGS}/stage3/vbench_{{gen}}.log",
        conda:
            "../environment.yml"
        threads: 8
        resources:
            gpu=1,
            mem_mb=64000,  # VBench loads a model per dimension (up to ViT-L and GRiT detectors) and every video
            # 16 dimensions over the suite's ~4,700 videos per generator; attempt n gets n times the time
            runtime=lambda wildcards, attempt: 24 * 60 * attempt,
        params:
            dims=" ".join(VBENCH.get("dimensions", [])),
            full_info=f"--full-info {shlex.quote(VBENCH['full_info'])}" if VBENCH.get("full_info") else "",
        shell:
            # the vbench package downloads its own weights on first use: the hub stays reachable for it
            "HF_HUB_OFFLINE=0 python -m vqinsight.stage3.vbench full --index {input.index:q} --name {wildcards.gen} --out {output:q} "
            "--dimensions {params.dims} {params.full_info} > {log:q} 2>&1"


rule stage3_winrate_manifest:
    input:
        a=lambda wc: sample_indexes(wc.gen, "heldout"),
        b=sample_indexes("g0", "heldout"),
        code=S3_CODE,
    output:
        f"{S3DIR}/eval/winrate/{{gen}}.parquet",
    log:
        f"{LOGS}/stage3/winrate_manifest_{{gen}}.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=4000,  # 200 held-out prompts x 2 samples against G_0's
        runtime=30,
    shell:
        "python -m vqinsight.stage3.pairs winrate-manifest --a {input.a:q} --b {input.b:q} --out {output:q} "
        "> {log:q} 2>&1"


rule stage3_winrate_judge:
    input:
        model=judge_path(S3_FINAL_JUDGE),
        manifest=f"{S3DIR}/eval/winrate/{{gen}}.parquet",
    output:
        f"{S3DIR}/eval/winrate/{{gen}}.jsonl",
    log:
        f"{LOGS}/stage3/winrate_judge_{{gen}}.log",
    conda:
        "../environment.yml"
    threads: GRPO["threads"]
    resources:
        gpu=min(1, S3_GPUS),
        mem_mb=64000 if S3_GPUS else 8000,  # as judge_predict: the 7B judge passes through host memory
        runtime=lambda wildcards, attempt: 12 * 60 * attempt,  # resumable (.partial); attempt n gets n times
    params:
        judge=s3_judge_args,
        media=media_args,
        trust=trust_flag,
    shell:
        "python -m vqinsight.judge --model {input.model:q} --manifest {input.manifest:q} --out {output:q} "
        "{params.judge} --threads {threads} {params.trust} {params.media} > {log:q} 2>&1"


rule stage3_eval:
    input:
        vbench=f"{S3DIR}/eval/vbench/{{gen}}.json",
        winrate=winrate_input,
        code=S3_CODE,
    output:
        f"{S3DIR}/eval/{{gen}}.json",
    log:
        f"{LOGS}/stage3/eval_{{gen}}.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=4000,  # a VBench summary and a few hundred verdicts, bootstrapped
        runtime=30,
    params:
        seed=config["seed"],
        predictions=lambda wc, input: f"--predictions {shlex.quote(str(input.winrate))}" if input.winrate else "",
    shell:
        "python -m vqinsight.stage3.evaluate {params.predictions} --vbench {input.vbench:q} "
        "--generator {wildcards.gen} --out {output:q} --seed {params.seed} > {log:q} 2>&1"


localrules:
    table6,


rule table6:
    input:
        evals=stage3_eval_files,
        reported=repo_file("config/reported.yaml"),
        code=REPORT_CODE,
    output:
        md=f"{RESULTS}/tables/table6.md",
        tex=f"{RESULTS}/tables/table6.tex",
        csv=report(f"{RESULTS}/tables/table6.csv", category="Tables", caption=report_caption("tables.rst")),
    log:
        f"{LOGS}/report/table6.log",
    conda:
        "../environment.yml"
    params:
        evals=" ".join(shlex.quote(f"{k}={S3DIR}/eval/{g}.json") for k, g in TABLE6_GENS.items()),
        out=lambda wildcards, output: str(Path(output.md).parent),
        demo="--demo" if S3_TINY else "",
    shell:
        "python -m vqinsight.report table6 --evals {params.evals} --reported {input.reported:q} "
        "--out-dir {params.out:q} {params.demo} > {log:q} 2>&1"


rule stage3:
    input:
        stage3_eval_files,
        [f"{S3DIR}/judges/{S3_FINAL_JUDGE}/model"],
        rules.table6.output,
