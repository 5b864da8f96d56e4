"""Resume bookkeeping of the training commands (vqinsight.training): complete checkpoints only, and only from the same
configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqinsight.dpo.train import CHECKPOINT as DPO_CHECKPOINT
from vqinsight.grpo.train import Recipe
from vqinsight.training import (
    COMPLETE,
    claim_checkpoint_dir,
    curves_table,
    latest_checkpoint,
    list_checkpoints,
    run_fingerprint,
)


def _ckpt(root, step, complete=True):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text("{}")
    if complete:
        (d / COMPLETE).write_text(str(step))
    return d


def test_latest_checkpoint_skips_and_removes_incomplete_ones(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    _ckpt(tmp_path, 2)
    _ckpt(tmp_path, 10)
    half = _ckpt(tmp_path, 12, complete=False)  # killed while saving
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert not half.exists()


def test_checkpoints_of_another_configuration_are_discarded(tmp_path):
    ck = tmp_path / "ck"
    claim_checkpoint_dir(ck, "aaa")
    _ckpt(ck, 4)
    claim_checkpoint_dir(ck, "aaa")  # same job rerun after a kill: keep
    assert latest_checkpoint(ck).name == "checkpoint-4"
    claim_checkpoint_dir(ck, "bbb")  # recipe / init model / data changed: start clean
    assert latest_checkpoint(ck) is None


def test_dpo_layout_keeps_the_latent_cache_and_drops_incomplete_steps(tmp_path):
    """Diffusion-DPO's step-NNNNNN checkpoints through the same claim: another configuration removes everything but
    the latent cache; the same configuration removes only a checkpoint killed while saving."""
    ck, pattern = tmp_path / "ck", DPO_CHECKPOINT
    claim_checkpoint_dir(ck, "aaa", pattern=pattern, keep=("latents",))
    (ck / "latents").mkdir()
    (ck / "latents" / "v.pt").write_bytes(b"z")
    for step, done in ((1, True), (2, True), (3, False)):
        (ck / f"step-{step:06d}").mkdir()
        if done:
            (ck / f"step-{step:06d}" / COMPLETE).write_text(str(step))
    claim_checkpoint_dir(ck, "aaa", pattern=pattern, keep=("latents",))
    assert [d.name for _, d, _ in list_checkpoints(ck, pattern)] == ["step-000001", "step-000002"]
    assert latest_checkpoint(ck, pattern).name == "step-000002"
    assert latest_checkpoint(ck) is None  # the Trainer's checkpoint-N names: none here
    claim_checkpoint_dir(ck, "bbb", pattern=pattern, keep=("latents",))
    assert sorted(p.name for p in ck.iterdir()) == ["latents", "run.json"]
    assert (ck / "latents" / "v.pt").read_bytes() == b"z"


def test_fingerprint_follows_recipe_model_and_data(tmp_path):
    recipe, model, manifest = tmp_path / "r.yaml", tmp_path / "model", tmp_path / "m.parquet"
    recipe.write_text("a: 1\n")
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    manifest.write_bytes(b"m")
    a = argparse.Namespace(
        recipe=recipe,
        model=str(model),
        manifests=[str(manifest)],
        tasks=["image_score"],
        split="train",
        seed=0,
        nframes=4,
        max_pixels=4704,
        min_pixels=784,
        image_max_pixels=None,
        reader="decord",
        scale=(1.0, 5.0),
    )
    f0 = run_fingerprint(a)
    assert run_fingerprint(a) == f0
    recipe.write_text("a: 2\n")
    f1 = run_fingerprint(a)
    (model / "model.safetensors").write_bytes(b"ww")
    f2 = run_fingerprint(a)
    assert len({f0, f1, f2}) == 3


def test_recipe_rejects_unknown_keys_and_missing_paper_constants(tmp_path):
    import pytest

    p = tmp_path / "r.yaml"
    p.write_text("trainer: {num_generations: 8}\nrewards: {format: 1}\ntemperal: {}\n")
    with pytest.raises(ValueError, match="temperal"):
        Recipe.load(p)
    p.write_text("trainer: {num_generations: 8}\nrewards: {format: 1}\n")
    with pytest.raises(ValueError, match="max_completion_length"):
        Recipe.load(p)


def test_curves_table_is_wide_csv():
    text = curves_table([{"step": 1, "reward": 0.5, "loss": 0.1}, {"step": 2, "reward": 0.7}, {"train_runtime": 3}])
    lines = text.splitlines()
    assert lines[0] == "step,loss,reward" and lines[1] == "1,0.1,0.5" and lines[2] == "2,,0.7"


def test_recipe_fast_path_keys_are_checked_and_shipped_values_load(tmp_path):
    import pytest

    base = "trainer: {num_generations: 8, max_completion_length: 8, learning_rate: 1.0e-6, beta: 0.0}\nrewards: {}\n"
    p = tmp_path / "r.yaml"
    bad = [
        ("rollout_engine: vllm\n", "rollout_engine"),
        ("outside_answer_weight: 2.0\n", "outside_answer_weight"),
        ("attn_implementation: flash\n", "attn_implementation"),
        ("rollout_compile: true\n", "rollout_compile"),  # the hf engine has no step to compile
        ("rollout_engine: static\nrollout_compile: yes please\n", "rollout_compile"),
        ("rollout_engine: static\nmerge_shuffled_rollouts: 1\n", "merge_shuffled_rollouts"),
        ("checkpoint_layers: 4\n", "checkpoint_layers needs trainer.gradient_checkpointing"),
        ("checkpoint_layers: -1\n", "checkpoint_layers must be >= 0"),
        ("checkpoint_layers: half\n", "checkpoint_layers must be an integer"),
        ("temporal: {enabled: true, correct: any}\n", "temporal.correct"),
    ]
    for extra, key in bad:
        p.write_text(base + extra)
        with pytest.raises(ValueError, match=key):
            Recipe.load(p)
    p.write_text(base + "rollout_engine: static\nrollout_compile: true\n")
    assert Recipe.load(p).rollout_compile is True
    p.write_text(base + "rollout_compile: false\n")
    assert Recipe.load(p).rollout_compile is False
    p.write_text(base.replace("beta: 0.0", "beta: 0.0, gradient_checkpointing: true") + "checkpoint_layers: 20\n")
    assert Recipe.load(p).checkpoint_layers == 20
    repo = Path(__file__).resolve().parents[2] / "config" / "recipes"
    shipped = {name: Recipe.load(repo / f"{name}.yaml") for name in ("paper_stage1", "paper_stage2", "demo_stage1",
                                                                      "demo_stage2")}  # fmt: skip
    assert {n: (r.rollout_engine, r.share_vision) for n, r in shipped.items()} == {
        "paper_stage1": ("static", True),
        "paper_stage2": ("static", True),
        "demo_stage1": ("hf", False),
        "demo_stage2": ("static", True),
    }
    assert all(r.outside_answer_weight == 1.0 and not r.comparison_both_orders for r in shipped.values())
    assert all(r.rollout_compile is None for r in shipped.values()), "compiled on CUDA only, by the default"
    assert all(r.checkpoint_layers is None for r in shipped.values()), "every layer recomputes unless a recipe says"
    # the paper's stage 2 merges the shuffled rollouts into the ordered batch; the demo keeps the stream it was tuned
    # on (config/recipes/demo_stage2.yaml)
    assert {n: r.merge_shuffled_rollouts for n, r in shipped.items()} == {
        "paper_stage1": True, "paper_stage2": True, "demo_stage1": True, "demo_stage2": False,
    }  # fmt: skip


def test_recipe_attention_implementation_reaches_the_model_loader(tmp_path, monkeypatch):
    """`attn_implementation` in a recipe is what the policy is loaded with (None keeps transformers' default)."""
    import pytest

    import vqinsight.models.load as load
    from vqinsight.grpo.train import main

    seen = []

    class Stop(Exception):
        pass

    def fake_loader(*args, **kwargs):
        seen.append(kwargs.get("attn_implementation", "missing"))
        raise Stop

    monkeypatch.setattr(load, "load_model_and_processor", fake_loader)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"")
    base = "trainer: {num_generations: 2, max_completion_length: 8, learning_rate: 1.0e-6, beta: 0.0}\nrewards: {}\n"
    for extra, want in (("", None), ("attn_implementation: eager\n", "eager")):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(base + extra)
        args = ["--recipe", str(recipe), "--model", str(tmp_path / "model"), "--manifests", str(manifest),
                "--tasks", "comparison", "--output-dir", str(tmp_path / "out"),
                "--checkpoint-dir", str(tmp_path / "ckpt"), "--cache-dir", str(tmp_path / "cache"),
                "--nframes", "4", "--max-pixels", "4704"]  # fmt: skip
        with pytest.raises(Stop):
            main(args)
        assert seen[-1] == want
