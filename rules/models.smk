# Checkpoints from the Hugging Face Hub (config `weights`): `snakemake models` downloads them on the login node.
# A job that loads one of these directories takes it as an input, so `snakemake --profile slurm all` also fetches
# them first, locally, before any GPU job is queued; the jobs themselves run with the hub offline (HF_HUB_OFFLINE=1,
# rules/common.smk), which is what compute nodes without internet access need.


localrules:
    model_weights,
    models,


rule model_weights:
    output:
        model=directory(f"{WEIGHTS_DIR}/{{weights}}"),
    log:
        f"{LOGS}/models/{{weights}}.log",
    conda:
        "../environment.yml"
    params:
        repo=lambda wildcards: WEIGHTS_HUB[wildcards.weights]["repo"],
        revision=lambda wildcards: (
            f"--revision {shlex.quote(WEIGHTS_HUB[wildcards.weights]['revision'])}"
            if "revision" in WEIGHTS_HUB[wildcards.weights]
            else ""
        ),
        allow=lambda wildcards: (
            "--allow " + " ".join(map(shlex.quote, WEIGHTS_HUB[wildcards.weights]["allow"]))
            if WEIGHTS_HUB[wildcards.weights].get("allow")
            else ""
        ),
        partial=f"{WEIGHTS_DIR}/.partial",
    shell:
        "HF_HUB_OFFLINE=0 python -m vqinsight.models.fetch --repo {params.repo:q} --out {output.model:q} "
        "{params.revision} {params.allow} --partial-dir {params.partial:q} > {log:q} 2>&1"


rule models:
    input:
        [f"{WEIGHTS_DIR}/{name}" for name in WEIGHTS_HUB],
