# Raw native files -> validated manifests (one parquet per dataset, one schema).


rule download:
    output:
        stamp=f"{RAW}/{{dataset}}/.fetched.json",
    log:
        f"{LOGS}/data/download_{{dataset}}.log",
    priority: data_priority
    conda:
        "../environment.yml"
    resources:
        mem_mb=4000,  # streams each file to disk in chunks; extraction is streamed too
        runtime=24 * 60,  # the largest archives (LSVQ's video shards, VisionReward's videos) are tens of GB
    params:
        raw=raw_dir_of_output,
        spec=dataset_spec,
    shell:
        "python -m vqinsight.data.fetch --dataset {wildcards.dataset} --raw-dir {params.raw:q} "
        "--spec {params.spec:q} --stamp {output.stamp:q} > {log:q} 2>&1"


rule manifest:
    input:
        stamp=f"{RAW}/{{dataset}}/.fetched.json",
        code=DATA_CODE,
    output:
        manifest=f"{RESULTS}/manifests/{{dataset}}.parquet",
        meta=f"{RESULTS}/manifests/{{dataset}}.meta.json",
    log:
        main=f"{LOGS}/data/manifest_{{dataset}}.log",
        quarantine=f"{RESULTS}/quarantine/{{dataset}}.csv",
    priority: data_priority
    conda:
        "../environment.yml"
    threads: config["data"]["workers"]
    resources:
        mem_mb=8000,  # a manifest holds up to ~40k rows; the media check opens each file in a worker
        runtime=6 * 60,  # the media check decodes the header of every video (LSVQ: 39k videos)
    params:
        raw=raw_dir_of_input,
        scale=score_scale,
        on_bad_input=config["data"]["on_bad_input"],
        reader=config["data"]["reader"],
        media_check="" if config["data"]["media_check"] else "--no-media-check",
        options=parse_options,
    shell:
        "python -m vqinsight.data.manifest --dataset {wildcards.dataset} --raw-dir {params.raw:q} "
        "--out {output.manifest:q} --meta {output.meta:q} --quarantine {log.quarantine:q} "
        "--scale {params.scale} --on-bad-input {params.on_bad_input} --reader {params.reader} "
        "--workers {threads} {params.media_check} {params.options}> {log.main:q} 2>&1"


rule frame_cache:
    input:
        manifest=f"{RESULTS}/manifests/{{dataset}}.parquet",
    output:
        index=f"{RESULTS}/frames/{{dataset}}.json",
    log:
        f"{LOGS}/data/frame_cache_{{dataset}}.log",
    priority: data_priority
    conda:
        "../environment.yml"
    threads: config["data"]["workers"]
    resources:
        mem_mb=8000,  # each worker holds one decoded 16-frame video at the pixel budget (~5 MB) at a time
        runtime=12 * 60,  # decodes every training video once (LSVQ: 28k videos, ~4.8 MB written per video)
    params:
        cache=f"{RESULTS}/frames/cache",
        nframes=config["data"]["nframes"],
        max_pixels=config["data"]["max_pixels"],
        min_pixels=config["data"]["min_pixels"],
        reader=config["data"]["reader"],
    shell:
        "python -m vqinsight.data.frames --manifest {input.manifest:q} --cache-dir {params.cache:q} "
        "--out {output.index:q} --nframes {params.nframes} --max-pixels {params.max_pixels} "
        "--min-pixels {params.min_pixels} --reader {params.reader} --workers {threads} > {log:q} 2>&1"


rule data:
    input:
        manifests,
        frame_caches,


# Preflight: `snakemake --profile slurm check` before the paper run (check_decode also decodes every media file:
# hours for LSVQ). Runs where Snakemake runs (the login node); prints what was read and one table of problems with
# their fixes, and fails on any problem.
rule check:
    log:
        f"{LOGS}/data/check.log",
    localrule: True
    conda:
        "../environment.yml"
    threads: config["data"]["workers"]
    params:
        datasets=preflight_datasets,
        models=preflight_models,
        scale=score_scale,
        reader=config["data"]["reader"],
        decode="",
    shell:
        "python -m vqinsight.preflight --datasets {params.datasets:q} --models {params.models:q} "
        "--scale {params.scale} --reader {params.reader} --workers {threads} {params.decode}2>&1 | tee {log:q}"


use rule check as check_decode with:
    log:
        f"{LOGS}/data/check_decode.log",
    params:
        datasets=preflight_datasets,
        models=preflight_models,
        scale=score_scale,
        reader=config["data"]["reader"],
        decode="--decode ",
