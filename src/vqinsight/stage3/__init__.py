"""Stage 3 (united finetuning): prompt sets, win/lose pair selection with the judge, VBench evaluation."""
