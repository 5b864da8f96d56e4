# The paper's Tables 1-5 and figures from the metrics files (cheap, local). Our rows sit beside the paper's reported
# rows (config/reported.yaml), clearly labelled. `snakemake --report results/report.html` collects them.

TABLES = [f"table{k}" for k in range(1, 6)]
REPORT_CODE = [str(SRC / "report" / f) for f in ("tables.py", "figures.py", "html.py", "learning.py", "__main__.py")]
# Tables as HTML pages in the report (Table 6, the generator's, when stage 3 runs), and a results page.
HTML_TABLES = TABLES + (["table6"] if "stage3" in config else [])


# The report's start page: the results summary beside the workflow graph.
report: "../docs/report/workflow.rst"


localrules:
    learning,
    tables,
    tables_html,
    figures,
    provenance,


rule tables:
    input:
        metrics=eval_metrics_files,
        reported=repo_file("config/reported.yaml"),
        code=REPORT_CODE,
    output:
        md=expand(f"{RESULTS}/tables/{{table}}.md", table=TABLES),
        tex=expand(f"{RESULTS}/tables/{{table}}.tex", table=TABLES),
        csv=[
            report(
                f"{RESULTS}/tables/{t}.csv",
                category="Tables",
                caption=report_caption("tables.rst"),
            )
            for t in TABLES
        ],
    log:
        f"{LOGS}/report/tables.log",
    conda:
        "../environment.yml"
    params:
        out=lambda wildcards, output: str(Path(output.md[0]).parent),
        demo="--demo" if BUILD_TINY else "",
    shell:
        "python -m vqinsight.report tables --metrics {input.metrics:q} --reported {input.reported:q} "
        "--out-dir {params.out:q} {params.demo} > {log:q} 2>&1"


rule tables_html:
    input:
        md=expand(f"{RESULTS}/tables/{{table}}.md", table=HTML_TABLES),
        code=REPORT_CODE,
    output:
        index=report(
            f"{RESULTS}/tables/html/index.html",
            category="Results",
            caption=report_caption("results.rst"),
        ),
        pages=[
            report(
                f"{RESULTS}/tables/html/{t}.html",
                category="Tables",
                subcategory="HTML",
                caption=report_caption("tables.rst"),
            )
            for t in HTML_TABLES
        ],
    log:
        f"{LOGS}/report/tables_html.log",
    conda:
        "../environment.yml"
    params:
        tables=lambda wildcards, input: str(Path(input.md[0]).parent),
        out=lambda wildcards, output: str(Path(output.index).parent),
        only=" ".join(HTML_TABLES),
    shell:
        "python -m vqinsight.report html --tables {params.tables:q} --out-dir {params.out:q} --only {params.only} "
        "> {log:q} 2>&1"


rule figures:
    input:
        metrics=eval_metrics_files,
        curves=list(curves_files().values()),
        code=REPORT_CODE,
    output:
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            category="Figures",
            caption=report_caption("figures.rst"),
        ),
    log:
        f"{LOGS}/report/figures.log",
    conda:
        "../environment.yml"
    params:
        dpi=config.get("report", {}).get("dpi", 150),
        curves=lambda wildcards: " ".join(
            shlex.quote(f"{label}={path}/curves.csv") for label, path in curves_files().items()
        ),
    shell:
        "python -m vqinsight.report figures --metrics {input.metrics:q} --curves {params.curves} "
        "--out-dir {output.figures:q} --dpi {params.dpi} > {log:q} 2>&1"


# What each trained model learned (held-out metrics before/after): the file the README's demo numbers come from.
rule learning:
    input:
        models=list(learning_models().values()),
        code=REPORT_CODE,
    output:
        md=f"{RESULTS}/tables/learning.md",
        csv=report(f"{RESULTS}/tables/learning.csv", category="Tables", caption=report_caption("tables.rst")),
        json=f"{RESULTS}/tables/learning.json",
    log:
        f"{LOGS}/report/learning.log",
    conda:
        "../environment.yml"
    params:
        models=" ".join(shlex.quote(f"{label}={path}") for label, path in learning_models().items()),
        out=lambda wildcards, output: str(Path(output.md).parent),
    shell:
        "python -m vqinsight.report learning --models {params.models} --out-dir {params.out:q} > {log:q} 2>&1"


# What produced each result: git SHA, time, device and package versions from every meta.json, in the HTML report.
rule provenance:
    input:
        meta=provenance_files,
        code=REPORT_CODE,
    output:
        report(f"{RESULTS}/provenance.csv", category="Provenance", caption=report_caption("provenance.rst")),
    log:
        f"{LOGS}/report/provenance.log",
    conda:
        "../environment.yml"
    params:
        meta=lambda wildcards, input: " ".join(shlex.quote(m) for m in provenance_meta(input.meta)),
    shell:
        "python -m vqinsight.report provenance --meta {params.meta} --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        rules.learning.output,
        rules.tables.output,
        rules.tables_html.output,
        rules.figures.output,
        rules.provenance.output,
