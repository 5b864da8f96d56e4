"""Diffusion-DPO fine-tuning of the text-to-video generator (stage 3) on win/lose video pairs chosen by the judge.

* ``loss``: the Diffusion-DPO objective (Salesforce / VideoDPO convention), implicit accuracy, per-sample MSE,
  min-SNR weights.
* ``data``: our pairs JSONL, VideoDPO's released ``pair.json`` + ``metadata.json``, and the VAE latent cache.
* ``train``: the training entry point (single process on CPU, or under ``accelerate launch``).

The package ``__init__`` imports nothing heavy; import the submodules explicitly.
"""
