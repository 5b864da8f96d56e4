"""Baselines of the paper's tables: Qwen-SFT (`sft`) and the CLIP metrics CLIPScore and CLIP-IQA (`clip`)."""
