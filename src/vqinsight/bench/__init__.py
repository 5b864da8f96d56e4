"""Micro-benchmarks: ``python -m vqinsight.bench NAME [options]`` writes one JSON result file per run."""
