"""Stage 3 Diffusion-DPO: the loss (hand-computed values, gradient signs), the pair readers, the latent cache, and
the training CLI on a tiny generator (LoRA, full fine-tuning, resume, SLURM's warning signal, bad recipes)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vqinsight.dpo import loss as dpo_loss
from vqinsight.dpo.data import LatentCache, read_pairs, read_videodpo
from vqinsight.dpo.loss import diffusion_dpo_loss, implicit_accuracy, min_snr_weights, per_sample_mse
from vqinsight.dpo.train import PairStream, Recipe, noisy_pair_batch, sample_timesteps, timestep_grid
from vqinsight.dpo.train import main as train_main
from vqinsight.dpo.videodpo import main as videodpo_main
from vqinsight.t2v.scheduler import T2VTurboScheduler, ddim_timesteps

REPO = Path(__file__).resolve().parents[2]
F, H, W = 4, 32, 32


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------------- loss


def _t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_dpo_loss_matches_a_hand_computed_value():
    mw, ml, rw, rl = _t(0.1, 0.3), _t(0.2, 0.1), _t(0.15, 0.2), _t(0.15, 0.2)
    # inside = -0.5 * 10 * ((mw - ml) - (rw - rl)) = [0.5, -1.0]
    a, b = math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.0))
    assert diffusion_dpo_loss(mw, ml, rw, rl, beta=10).item() == pytest.approx((a + b) / 2, rel=1e-6)
    assert diffusion_dpo_loss(mw, ml, rw, rl, beta=10, weights=_t(1.0, 3.0)).item() == pytest.approx(
        (a + 3 * b) / 2, rel=1e-6
    )
    # diffusers' convention (no 0.5) with beta/2 is the same objective
    diffusers = -torch.nn.functional.logsigmoid(5.0 * ((rw - rl) - (mw - ml))).mean()
    assert diffusion_dpo_loss(mw, ml, rw, rl, beta=10).item() == pytest.approx(diffusers.item(), rel=1e-6)
    # model == reference: log 2
    assert diffusion_dpo_loss(rw, rl, rw, rl, beta=5000).item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        diffusion_dpo_loss(mw, ml, rw, _t(1.0), beta=1)


def test_lowering_the_winners_error_lowers_the_loss():
    mw, ml = _t(0.20, 0.5).requires_grad_(), _t(0.25, 0.4).requires_grad_()
    diffusion_dpo_loss(mw, ml, _t(0.22, 0.45), _t(0.22, 0.45), beta=50).backward()
    assert (mw.grad > 0).all() and (ml.grad < 0).all()
    before = diffusion_dpo_loss(mw, ml, _t(0.22, 0.45), _t(0.22, 0.45), beta=50)
    after = diffusion_dpo_loss(mw - 0.01, ml, _t(0.22, 0.45), _t(0.22, 0.45), beta=50)
    assert after < before


def test_implicit_accuracy_counts_ties_as_half():
    ref = _t(0.3, 0.3, 0.3)
    # pair 0 prefers the winner (inside > 0), pair 1 the loser, pair 2 is a tie
    acc = implicit_accuracy(_t(0.1, 0.5, 0.3), _t(0.3, 0.3, 0.3), ref, ref, beta=5000)
    assert acc.item() == pytest.approx((1 + 0.5) / 3)
    assert implicit_accuracy(ref, ref, ref, ref).item() == 0.5


def test_min_snr_weights():
    abar = T2VTurboScheduler().alphas_cumprod
    t = torch.tensor([0, 499, 999])
    w = min_snr_weights(t, abar, gamma=5.0)
    snr = [abar[i].item() / (1 - abar[i].item()) for i in (0, 499, 999)]
    assert snr[0] > 5 and snr[2] < 5
    assert w.tolist() == pytest.approx([min(s, 5.0) / s for s in snr], rel=1e-6)
    assert w[2].item() == pytest.approx(1.0) and w[0].item() < 0.01
    with pytest.raises(ValueError):
        min_snr_weights(t, abar, gamma=0)


def test_per_sample_mse_averages_every_axis_but_the_batch():
    pred = torch.zeros(2, 4, 3, 2, 5)
    target = torch.zeros_like(pred)
    target[1, :, :, :, 0] = 2.0  # one W column of sample 1: the W axis must be averaged too (not VideoDPO's quirk)
    assert per_sample_mse(pred, target).tolist() == pytest.approx([0.0, 4.0 / 5])


def test_pair_shares_noise_and_timestep():
    sched = T2VTurboScheduler()
    g = torch.Generator().manual_seed(0)
    grid = timestep_grid({"grid": "ddim", "ddim_steps": 50})
    t = sample_timesteps(64, grid, g)
    assert set(t.tolist()) <= set(ddim_timesteps(50)) and len(set(t.tolist())) > 10
    lat = torch.randn(3, 4, 2, 4, 4)
    other = torch.randn_like(lat)
    noise = torch.randn_like(lat)
    noisy, t2, n2 = noisy_pair_batch(sched, lat, lat.clone(), t[:3], noise)
    assert torch.equal(noisy[:3], noisy[3:]) and torch.equal(t2[:3], t2[3:]) and torch.equal(n2[:3], n2[3:])
    noisy, _, _ = noisy_pair_batch(sched, lat, other, t[:3], noise)
    abar = sched.alphas_cumprod[t[:3]].float().reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy[:3] - noisy[3:], abar.sqrt() * (lat - other), rtol=1e-4, atol=1e-5)


def test_pair_stream_is_a_pure_function_of_the_position():
    s = PairStream(5, seed=3)
    first = s.take(0, 10)
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:]) == list(range(5))
    assert PairStream(5, seed=3).take(7, 3) == first[7:10]
    assert PairStream(5, seed=4).take(0, 10) != first


# ------------------------------------------------------------------------------------------------------ pairs


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_read_pairs_resolves_paths_and_weights(tmp_path, monkeypatch):
    _touch(tmp_path / "data/v/a.mp4")
    _touch(tmp_path / "data/v/b.mp4")
    f = tmp_path / "data/pairs.jsonl"
    rows = [
        {"prompt_id": 1, "prompt": "a cat", "win": "v/a.mp4", "lose": "v/b.mp4"},
        {"prompt_id": "p2", "prompt": "a dog", "win": str(tmp_path / "data/v/b.mp4"), "lose": "v/a.mp4", "weight": 2},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    monkeypatch.chdir(tmp_path)  # relative to the pairs file, since data/v/a.mp4 is not "v/a.mp4" from here
    pairs = read_pairs(f)
    assert [p["prompt_id"] for p in pairs] == ["1", "p2"]
    assert pairs[0]["win"] == str((tmp_path / "data/v/a.mp4").resolve())
    assert [p["weight"] for p in pairs] == [1.0, 2.0]
    assert pairs[1]["source"].endswith("pairs.jsonl:2")


def test_read_pairs_errors_name_the_file_and_line(tmp_path):
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "b.mp4")
    good = json.dumps({"prompt_id": "p", "prompt": "x", "win": "a.mp4", "lose": "b.mp4"})
    f = tmp_path / "pairs.jsonl"
    f.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: not valid JSON"):
        read_pairs(f)
    f.write_text(good + "\n" + json.dumps({"prompt_id": "p", "prompt": "x", "win": "a.mp4"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: missing key\(s\) \['lose'\]"):
        read_pairs(f)
    f.write_text(json.dumps({"prompt_id": "p", "prompt": "x", "win": "a.mp4", "lose": "b.mp4", "weight": -1}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:1: 'weight'"):
        read_pairs(f)
    f.write_text(good + "\n" + json.dumps({"prompt_id": "q", "prompt": "y", "win": "a.mp4", "lose": "gone.mp4"}))
    with pytest.raises(FileNotFoundError, match=r"gone\.mp4 \(from .*pairs\.jsonl:2\)"):
        read_pairs(f)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_pairs(tmp_path / "nope.jsonl")


def test_read_videodpo_and_conversion(tmp_path):
    meta = tmp_path / "meta"
    for i in range(3):
        _touch(meta / f"clips/{i}.mp4")
    items = [{"basic": {"clip_path": f"clips/{i}.mp4"}, "misc": {"frame_caption": f"caption {i}"}} for i in range(3)]
    (meta / "metadata.json").write_text(json.dumps(items))
    raw = [
        {"video1": 2, "video2": 0, "frame_caption": "own caption", "score": 0.36},
        {"video1": 1, "video2": 2, "score": 1.44},
    ]
    (meta / "pair.json").write_text(json.dumps(raw))

    pairs = read_videodpo(meta)
    assert [p["prompt"] for p in pairs] == ["own caption", "caption 1"]
    assert pairs[0]["win"] == str((meta / "clips/2.mp4").resolve()) and pairs[0]["lose"].endswith("clips/0.mp4")
    assert [p["weight"] for p in pairs] == [1.0, 1.0]  # dupbeta 0: uniform
    assert [p["weight"] for p in read_videodpo(meta, dupbeta=1.0)] == pytest.approx([2.0, 0.5])  # 0.72 / score

    out = tmp_path / "pairs.jsonl"
    assert videodpo_main(["--meta", str(meta), "--out", str(out), "--dupbeta", "1"]) == 0
    back = read_pairs(out)
    assert [(p["win"], p["lose"], p["weight"]) for p in back] == [
        (p["win"], p["lose"], p["weight"]) for p in read_videodpo(meta, 1.0)
    ]

    (meta / "pair.json").write_text(json.dumps([{"video1": 5, "video2": 0}]))
    with pytest.raises(ValueError, match=r"pair\.json: pair 0: 'video1'"):
        read_videodpo(meta)
    (meta / "pair.json").write_text(json.dumps([{"video1": 1, "video2": 0}]))
    (meta / "clips/0.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"clips/0\.mp4"):
        read_videodpo(meta)
    with pytest.raises(ValueError, match="needs a positive 'score'"):
        read_videodpo(meta, dupbeta=1.0, check_files=False)


# ------------------------------------------------------------------------------------------- tiny generator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny generator (4 frames, 32x32), 4 pairs of random mp4s, and its pairs file (relative paths)."""
    from vqinsight.t2v.model import save_generator
    from vqinsight.t2v.tiny import build_tiny_generator
    from vqinsight.video import write_video

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dpo")
    gen = build_tiny_generator(num_frames=F, height=H, width=W, seed=0)
    save_generator(gen, root / "gen")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        for k in ("w", "l"):
            frames = rng.integers(0, 256, (6, H, W, 3), dtype=np.uint8)
            if k == "w":
                frames = (frames // 4 + 96).astype(np.uint8)  # smoother winners
            write_video(root / "videos" / f"{i}{k}.mp4", frames)
        lines.append(
            json.dumps(
                {"prompt_id": f"p{i}", "prompt": f"prompt {i}", "win": f"videos/{i}w.mp4", "lose": f"videos/{i}l.mp4"}
            )
        )
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


RECIPE = {
    "beta": 5000,
    "learning_rate": 1.0e-3,
    "max_steps": 3,
    "batch_size": 2,
    "grad_accum": 2,
    "lora": {"rank": 2},
    "timesteps": {"grid": "ddim", "ddim_steps": 50},
    "save_every": 10,
}


def _run(tiny: Path, work: Path, recipe: dict, *extra: str, name: str = "r.yaml") -> int:
    work.mkdir(parents=True, exist_ok=True)
    (work / name).write_text(yaml.safe_dump(recipe))
    argv = [
        "--recipe", str(work / name), "--model", str(tiny / "gen"), "--pairs", str(tiny / "pairs.jsonl"),
        "--out", str(work / "out"), "--checkpoint-dir", str(work / "ck"), "--log-dir", str(work / "logs"),
        "--cache-dir", str(tiny / "latents"), "--seed", "0", "--threads", "1", *extra,
    ]  # fmt: skip
    return train_main(argv)


def _csv(work: Path) -> list[dict[str, float]]:
    with open(work / "logs/train_log.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _unet_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "unet/diffusion_pytorch_model.safetensors"))


def test_latent_cache_encodes_once_resizes_and_rebuilds(tiny, tmp_path, caplog):
    from vqinsight.t2v.model import load_generator
    from vqinsight.video import write_video

    gen = load_generator(tiny / "gen")
    cache = LatentCache(gen, tmp_path / "lat")
    v = tiny / "videos/0w.mp4"
    lat = cache.get(v)
    assert lat.shape == (4, F, H // 8, W // 8) and lat.dtype == torch.float32
    assert torch.equal(cache.get(v), lat) and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(LatentCache(gen, tmp_path / "lat").get(v), lat)  # from disk

    cache.path(v).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        again = cache.get(v)
    assert "re-encoding" in caplog.text and torch.equal(again, lat) and cache.misses == 2

    odd = tmp_path / "odd.mp4"  # another size and aspect: resized to cover 32x32, center-cropped
    write_video(odd, np.random.default_rng(1).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8))
    assert cache.get(odd).shape == (4, F, H // 8, W // 8)
    k = cache.key(odd)
    os.utime(odd, ns=(1, 1))
    assert cache.key(odd) != k  # a re-rendered file gets new latents


@pytest.mark.slow
def test_train_lora_writes_a_merged_generator(tiny, tmp_path, fresh_accelerate_state):
    from safetensors.torch import load_file

    from vqinsight.t2v.model import load_generator

    work = tmp_path / "run"
    assert _run(tiny, work, RECIPE) == 0
    rows = _csv(work)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # LoRA B starts at 0: policy == reference
    assert all(math.isfinite(r["grad_norm"]) and r["lr"] == pytest.approx(1e-3) for r in rows)
    assert any(r["model_diff"] != r["ref_diff"] for r in rows[1:])  # the policy has left the reference

    ck = work / "ck/step-000003"
    assert (ck / "COMPLETE").is_file()
    trained = load_file(str(ck / "trainable.safetensors"))
    assert trained and all(".lora_A." in k or ".lora_B." in k for k in trained)

    gen = load_generator(work / "out")
    assert gen.config.num_frames == F and not any("lora" in n for n, _ in gen.unet.named_parameters())
    before, after = _unet_state(tiny / "gen"), _unet_state(work / "out")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(("to_q" in k or "to_k" in k or "to_v" in k or "to_out.0" in k) for k in changed)
    assert (work / "out/vae").is_dir() and (work / "logs/tb").is_dir()
    summary = json.loads((work / "out/dpo_summary.json").read_text())
    assert summary["steps"] == 3 and summary["pairs"] == 4 and summary["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert not (work / "out.tmp").exists()


@pytest.mark.slow
def test_resume_continues_where_the_checkpoint_left_off(tiny, tmp_path, fresh_accelerate_state, caplog):
    short = {**RECIPE, "max_steps": 2, "save_every": 1}
    work = tmp_path / "run"
    assert _run(tiny, work, short) == 0
    assert sorted(p.name for p in (work / "ck").glob("step-*")) == ["step-000001", "step-000002"]
    with open(work / "logs/train_log.csv", "a") as f:  # a row logged after the last checkpoint (killed at step 3)
        f.write("3,9,9,9,9,9,9,9\n")
    with caplog.at_level(logging.INFO, logger="vqinsight.dpo"):
        assert _run(tiny, work, {**short, "max_steps": 4}) == 0
    assert "resuming from" in caplog.text and "step-000002 (step 2)" in caplog.text
    rows = _csv(work)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert sorted(p.name for p in (work / "ck").glob("step-*")) == ["step-000003", "step-000004"]  # keep 2

    straight = tmp_path / "straight"
    assert _run(tiny, straight, {**short, "max_steps": 4}) == 0
    ref = _csv(straight)
    for a, b in zip(rows, ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    resumed_unet, straight_unet = _unet_state(work / "out"), _unet_state(straight / "out")
    initial = _unet_state(tiny / "gen")
    assert any(not torch.equal(v, initial[k]) for k, v in straight_unet.items())
    for k, v in straight_unet.items():
        torch.testing.assert_close(resumed_unet[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigurg_checkpoints_and_exits_75(tiny, tmp_path, fresh_accelerate_state, monkeypatch):
    real = dpo_loss.diffusion_dpo_loss
    calls = []

    def loss_then_signal(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGURG)  # SLURM's warning arrives during step 1
        return real(*args, **kw)

    monkeypatch.setattr(dpo_loss, "diffusion_dpo_loss", loss_then_signal)
    work = tmp_path / "run"
    assert _run(tiny, work, RECIPE) == 75
    assert (work / "ck/step-000001/COMPLETE").is_file() and not (work / "out").exists()
    assert [r["step"] for r in _csv(work)] == [1]
    assert signal.getsignal(signal.SIGURG) in (signal.SIG_DFL, signal.SIG_IGN, None)
    monkeypatch.setattr(dpo_loss, "diffusion_dpo_loss", real)
    assert _run(tiny, work, RECIPE) == 0
    assert [r["step"] for r in _csv(work)] == [1, 2, 3]


@pytest.mark.slow
def test_full_finetune_with_a_frozen_copy(tiny, tmp_path, fresh_accelerate_state):
    from safetensors.torch import load_file

    work = tmp_path / "run"
    recipe = {
        **RECIPE,
        "max_steps": 1,
        "grad_accum": 1,
        "lora": None,
        "reference": "frozen_copy",
        "learning_rate": 1e-4,
    }
    assert _run(tiny, work, recipe) == 0
    trained = load_file(str(work / "ck/step-000001/trainable.safetensors"))
    before, after = _unet_state(tiny / "gen"), _unet_state(work / "out")
    assert set(trained) == set(before) and not any("lora" in k for k in trained)
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2
    assert _csv(work)[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)


# ------------------------------------------------------------------------------------------------- recipes


def test_bad_recipes_and_inputs_fail_with_a_named_reason(tiny, tmp_path, caplog):
    work = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        assert _run(tiny, work, {**RECIPE, "lerning_rate": 1e-3}) == 2
    assert "unknown recipe key(s) ['lerning_rate']" in caplog.text and "r.yaml" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert _run(tiny, work, {**RECIPE, "lora": {"rank": 2, "alfa": 2}}) == 2
    assert "alfa" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert _run(tiny, work, {**RECIPE, "lora": None, "reference": "lora_disabled"}) == 2
    assert "frozen_copy" in caplog.text
    caplog.clear()
    no_lr = {k: v for k, v in RECIPE.items() if k != "learning_rate"}
    with caplog.at_level(logging.ERROR):
        assert _run(tiny, work, no_lr) == 2
    assert "['learning_rate']" in caplog.text
    caplog.clear()
    (work / "ok.yaml").write_text(yaml.safe_dump(RECIPE))
    base = ["--recipe", str(work / "ok.yaml"), "--out", str(work / "o"), "--checkpoint-dir", str(work / "c")]
    base += ["--log-dir", str(work / "l")]
    with caplog.at_level(logging.ERROR):
        assert train_main([*base, "--model", str(tmp_path / "no_gen"), "--pairs", str(tiny / "pairs.jsonl")]) == 2
    assert "no_gen: generator directory not found" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert train_main([*base, "--model", str(tiny / "gen"), "--pairs", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: pairs file not found" in caplog.text
    assert not (work / "c").exists()


def test_shipped_recipes_load():
    demo = Recipe.load(REPO / "config/recipes/demo_dpo.yaml")
    paper = Recipe.load(REPO / "config/recipes/paper_dpo.yaml")
    assert demo.lora["rank"] == 4 and demo.beta == 5000 and demo.timesteps == {"grid": "ddim", "ddim_steps": 50}
    assert demo.reference == "lora_disabled"
    assert (paper.learning_rate, paper.batch_size, paper.grad_accum, paper.beta) == (6e-6, 1, 4, 5000)
    assert paper.mixed_precision == "bf16" and paper.timesteps["ddim_steps"] == 50 and paper.lora is not None
