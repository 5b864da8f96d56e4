"""Report: the paper's tables and figures from this run's metrics files, and an index for ``snakemake --report``.

    python -m vqinsight.report tables  --metrics M.json ... --reported config/reported.yaml --out-dir DIR [--demo]
    python -m vqinsight.report figures --metrics M.json ... --curves [LABEL=]curves.csv ... --out-dir DIR
    python -m vqinsight.report index   --tables DIR --figures DIR --out index.md

Kept apart from evaluation on purpose: metrics files are the only interface, so a table can be rebuilt (or a
new figure added) without re-running any model, and nothing here can change a number, only how it is shown.
``vqinsight.report.figures`` imports matplotlib; it is not imported here so that the tables need no plotting stack.
"""

from __future__ import annotations

from vqinsight.report.tables import (
    ABLATION_TABLES,
    MetricsRecord,
    build_tables,
    load_metrics,
    load_reported,
    write_tables,
)

__all__ = ["ABLATION_TABLES", "MetricsRecord", "build_tables", "load_metrics", "load_reported", "write_tables"]
