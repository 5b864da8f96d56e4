# The SLURM executor's failure, retry, warning-signal and local-rule paths, on the local cluster of
# scripts/local-slurm.sh (tests/workflow/test_slurm.py runs it with tests/slurm/profile). The demo slice covers
# the project's own rules; these are the paths the demo never takes.


rule all:
    default_target: True
    input:
        "results/summary.txt",
    localrule: True


# Fails on its first attempt and succeeds on the second: with `retries: 1` Snakemake resubmits it to SLURM.
rule flaky:
    output:
        "results/flaky.txt",
    log:
        "logs/flaky.log",
    resources:
        attempt_no=lambda wildcards, attempt: attempt,
    shell:
        "echo attempt={resources.attempt_no} job=$SLURM_JOB_ID >> {log} && "
        "test {resources.attempt_no} -ge 2 && echo attempt={resources.attempt_no} > {output}"


# The profile's `--signal=URG@...` must reach the program (here a stand-in for the trainer, using the trainer's
# handler) while Snakemake and the shell around it, in the same job step, keep running.
rule warned:
    output:
        "results/warned.txt",
    log:
        "logs/warned.log",
    params:
        waiter=f"{workflow.basedir}/wait_for_signal.py",
    shell:
        "python {params.waiter:q} --timeout 100 > {output:q} 2> {log:q} && echo shell survived >> {output:q}"


# Never submitted: runs on the submit host, where SLURM_JOB_ID is unset.
rule summary:
    input:
        rules.flaky.output,
        rules.warned.output,
    output:
        "results/summary.txt",
    log:
        "logs/summary.log",
    localrule: True
    shell:
        "(cat {input:q} && echo summary job=${{SLURM_JOB_ID:-none}}) > {output:q} 2> {log:q}"
