# vqinsight: the VQ-Insight pipeline (Zhang, Li, Zhao et al., AAAI 2026) as one Snakemake DAG.
#
#   snakemake --cores 2 --configfile config/demo.yaml     # embedded demo (what `make demo` runs)
#   snakemake --profile slurm all                          # paper run on a SLURM cluster
#
# Path grammar: <raw_dir>/<dataset>/...                    native files (downloaded or generated)
#               <results_dir>/manifests/<dataset>.parquet  one manifest schema for every dataset
#               <results_dir>/quarantine/<dataset>.csv     rejected rows/files with reasons
#               logs/<run>/<phase>/<job>.log
from snakemake.utils import min_version

min_version("9.27")


# The paper config is the default; a --configfile replaces it instead of being deep-merged into it, so the demo
# (or a user's config) never inherits paper dataset URLs.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


envvars:
    "PATH",


include: "rules/common.smk"
include: "rules/checks.smk"
include: "rules/models_common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/grpo.smk"
include: "rules/eval.smk"
include: "rules/report.smk"


if "stage3" in config:

    include: "rules/stage3_common.smk"
    include: "rules/stage3.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.grpo.input,
        rules.eval.input,
        rules.report.input,
        rules.stage3.input if "stage3" in config else [],
