"""The VQ-Insight judge: its prompt and answer formats (``formats``), the engine that turns judgment items into
prediction records (``engine``) and the command the Snakemake rules run (``python -m vqinsight.judge``,
``__main__``). Rows, judgment items and the predictions file are ``vqinsight.records``."""
