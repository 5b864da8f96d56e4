"""Unit tests for vqinsight.t2v: T2V-Turbo's scheduler, the seeded sampling loop, the sample CLI and the converter."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
torch.set_num_threads(1)

from vqinsight.t2v import convert, sample  # noqa: E402
from vqinsight.t2v.model import load_generator, save_generator  # noqa: E402
from vqinsight.t2v.pipeline import sample_videos  # noqa: E402
from vqinsight.t2v.scheduler import T2VTurboScheduler, t2v_turbo_timesteps, w_embedding  # noqa: E402
from vqinsight.t2v.tiny import build_tiny_generator  # noqa: E402

FRAMES, SIZE = 4, 32


@pytest.fixture(scope="module")
def gen():
    return build_tiny_generator(seed=0, num_frames=FRAMES, height=SIZE, width=SIZE)


@pytest.fixture(scope="module")
def model_dir(gen, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_generator(gen, tmp_path_factory.mktemp("gen") / "tiny")


# ----------------------------------------------------------------------------------------------------- scheduler


def test_timesteps_are_t2v_turbos_and_not_diffusers_lcm():
    from diffusers import LCMScheduler

    assert t2v_turbo_timesteps(4) == [999, 759, 519, 279]
    assert t2v_turbo_timesteps(8) == [999, 879, 759, 639, 519, 399, 279, 159]
    assert T2VTurboScheduler().set_timesteps(1) == [999]
    for n in (4, 8):
        lcm = LCMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", original_inference_steps=50
        )
        lcm.set_timesteps(n)
        theirs = [int(t) for t in lcm.timesteps]
        assert len(theirs) == n
        assert theirs != t2v_turbo_timesteps(n)
    with pytest.raises(ValueError, match="num_steps"):
        t2v_turbo_timesteps(0)


def test_alphas_cumprod_is_the_float32_scaled_linear_table():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    want = torch.cumprod(1 - betas, 0)
    got = T2VTurboScheduler().alphas_cumprod
    assert torch.equal(got.float(), want)
    assert 0.0046 < float(got[999]) < 0.0047


def test_boundary_condition():
    c_skip, c_out = T2VTurboScheduler.boundary(0)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    c_skip, c_out = T2VTurboScheduler.boundary(1)  # t / 0.1 = 10, sigma_data = 0.5
    assert float(c_skip) == pytest.approx(0.25 / 100.25)
    assert float(c_out) == pytest.approx(10 / math.sqrt(100.25))
    c_skip, c_out = T2VTurboScheduler.boundary(torch.tensor([999, 279]))
    assert torch.all(c_skip < 1e-7) and torch.allclose(c_out, torch.ones(2))


def test_w_embedding():
    w = torch.tensor([7.5, 1.0])
    emb = w_embedding(w, 256)
    assert emb.shape == (2, 256) and emb.dtype == torch.float32
    freq = np.exp(-np.arange(128) * np.log(10000.0) / 127)
    arg = np.array([7500.0, 1000.0])[:, None] * freq[None]  # the scale is multiplied by 1000
    want = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)
    np.testing.assert_allclose(emb.numpy(), want, atol=2e-3)
    assert float(w_embedding(torch.tensor([0.001]), 8)[0, 0]) == pytest.approx(math.sin(1.0), abs=1e-5)
    odd = w_embedding(torch.tensor([2.0]), 9)
    assert odd.shape == (1, 9) and float(odd[0, -1]) == 0.0


def test_step_renoises_and_last_step_returns_denoised():
    sched = T2VTurboScheduler()
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 3, 4, 4, generator=g) for _ in range(3))
    a = sched.alphas_cumprod.float()
    x0 = (x - (1 - a[279]).sqrt() * eps) / a[279].sqrt()
    c_skip, c_out = T2VTurboScheduler.boundary(279)
    denoised = c_out * x0 + c_skip * x
    prev, den = sched.step(eps, 279, x, None)
    assert torch.allclose(den, denoised, atol=1e-5) and torch.equal(prev, den)
    prev, den = sched.step(eps, 279, x, 159, z)
    assert torch.allclose(den, denoised, atol=1e-5)
    assert torch.allclose(prev, a[159].sqrt() * denoised + (1 - a[159]).sqrt() * z, atol=1e-5)
    with pytest.raises(ValueError, match="noise"):
        sched.step(eps, 279, x, 159)


# ------------------------------------------------------------------------------------------------------ sampling


def test_sample_videos_shape_and_seeding(gen):
    a = sample_videos(gen, ["a red car", "a dog", "waves"], [1, 2, 3])
    assert a.dtype == np.uint8 and a.shape == (3, FRAMES, SIZE, SIZE, 3)
    alone = sample_videos(gen, ["a dog"], [2])
    other_batch = sample_videos(gen, ["sky", "a dog"], [7, 2])
    np.testing.assert_array_equal(a[1], alone[0])  # one sample depends only on (prompt, seed)
    np.testing.assert_array_equal(a[1], other_batch[1])
    assert not np.array_equal(sample_videos(gen, ["a dog"], [3])[0], alone[0])  # seed matters
    assert not np.array_equal(sample_videos(gen, ["a dog"], [2], guidance=2.0)[0], alone[0])  # w enters the UNet
    assert sample_videos(gen, ["x"], [0], num_frames=2, height=16, width=24, steps=1).shape == (1, 2, 16, 24, 3)
    assert gen.unet.training is False
    with pytest.raises(ValueError, match="one seed per prompt"):
        sample_videos(gen, ["a", "b"], [1])


def test_derive_seed():
    s = sample.derive_seed(0, 1, "p1", 0)
    want = int.from_bytes(hashlib.sha256(b"0|1|p1|0").digest()[:8], "big") & (2**63 - 1)
    assert s == want and 0 <= s < 2**63
    others = {
        sample.derive_seed(0, 2, "p1", 0),
        sample.derive_seed(0, 1, "p1", 1),
        sample.derive_seed(0, 1, "p2", 0),
        sample.derive_seed(1, 1, "p1", 0),
    }
    assert s not in others and len(others) == 4
    torch.Generator().manual_seed(s)  # accepted by torch
    assert all(0 <= sample.derive_seed(0, 0, f"id{i}", i) < 2**63 for i in range(50))


def _write_prompts(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"prompt_id": "a", "prompt": "x"}, "{not json"], r"prompts.jsonl:2: not valid JSON"),
        ([{"prompt_id": "a"}], r"prompts.jsonl:1: missing field 'prompt'"),
        ([{"prompt_id": "a", "prompt": "  "}], r"prompts.jsonl:1: field 'prompt' must be a non-empty string"),
        ([{"prompt_id": "", "prompt": "x"}], r"prompts.jsonl:1: field 'prompt_id' must be a non-empty"),
        ([{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "a", "prompt": "y"}], r":2: duplicate prompt_id 'a'"),
        ([{"prompt_id": "../up", "prompt": "x"}], r":1: prompt_id '../up' cannot be used as a directory"),
    ],
)
def test_read_prompts_errors(tmp_path: Path, rows, match):
    with pytest.raises(ValueError, match=match):
        sample.read_prompts(_write_prompts(tmp_path / "prompts.jsonl", rows))


def test_sample_cli_missing_inputs(tmp_path: Path, model_dir: Path, caplog):
    prompts = _write_prompts(tmp_path / "p.jsonl", [{"prompt_id": "a", "prompt": "x"}])
    args = ["--n", "1", "--round", "0", "--seed", "0", "--out", str(tmp_path / "out")]
    assert sample.main(["--model", str(tmp_path / "nope"), "--prompts", str(prompts), *args]) == 2
    assert "generator directory not found" in caplog.text
    assert sample.main(["--model", str(model_dir), "--prompts", str(tmp_path / "none.jsonl"), *args]) == 2
    assert "prompts file not found" in caplog.text
    bad = _write_prompts(tmp_path / "bad.jsonl", ["[1, 2"])
    assert sample.main(["--model", str(model_dir), "--prompts", str(bad), *args]) == 2
    assert not (tmp_path / "out").exists()


def _read_index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sample_cli_shards_resume_and_settings(tmp_path: Path, model_dir: Path):
    prompts = _write_prompts(
        tmp_path / "prompts.jsonl",
        [{"prompt_id": "p-b", "prompt": "a dog"}, {"prompt_id": "p-a", "prompt": "a red car"}],
    )

    def run(shard: int, *extra: str) -> Path:
        out = tmp_path / f"shard{shard}"
        argv = ["--model", str(model_dir), "--prompts", str(prompts), "--n", "2", "--round", "1", "--seed", "5"]
        argv += ["--out", str(out), "--shard", str(shard), "--num-shards", "2", "--batch-size", "3", "--threads", "1"]
        assert sample.main([*argv, *extra]) == 0
        return out

    outs = [run(0), run(1)]
    for out, pid, text in [(outs[0], "p-b", "a dog"), (outs[1], "p-a", "a red car")]:  # shard I takes prompts[I::2]
        index = _read_index(out)
        assert [(r["prompt_id"], r["index"]) for r in index] == [(pid, 0), (pid, 1)]
        for r in index:
            assert r["prompt"] == text and r["seed"] == sample.derive_seed(5, 1, pid, r["index"])
            assert r["path"] == str(out / pid / f"{r['index']:02d}.mp4") and Path(r["path"]).is_file()
        assert json.loads((out / "index.meta.json").read_text())["videos"] == 2

    # resume: only the deleted video is sampled again, and it comes back byte-identical
    out = outs[0]
    files = sorted(out.glob("*/*.mp4"))
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    files[0].unlink()
    run(0)
    assert files[0].read_bytes() == before[files[0]][0]
    assert files[1].stat().st_mtime_ns == before[files[1]][1]
    assert files[0].stat().st_mtime_ns != before[files[0]][1]

    # other seeds (a new round): the old videos are stale and are replaced
    assert (
        sample.main(
            ["--model", str(model_dir), "--prompts", str(prompts), "--n", "2", "--round", "2", "--seed", "5"]
            + ["--out", str(out), "--shard", "0", "--num-shards", "2", "--threads", "1"]
        )
        == 0
    )
    assert all(f.read_bytes() != before[f][0] for f in files)
    assert [r["seed"] for r in _read_index(out)] == [sample.derive_seed(5, 2, "p-b", i) for i in range(2)]


# ------------------------------------------------------------------------------------------------------- convert


RANK = 8


@pytest.fixture(scope="module")
def fake_release(gen, tmp_path_factory: pytest.TempPathFactory):
    """A tiny "text-to-video-ms-1.7b" (teacher UNet without time_cond_proj_dim) and a LoRA list for its student."""
    from diffusers import UNet3DConditionModel

    root = tmp_path_factory.mktemp("release")
    base = root / "base"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        teacher = UNet3DConditionModel.from_config(gen.unet.config, time_cond_proj_dim=None)
    teacher.save_pretrained(base / "unet", safe_serialization=True)
    gen.vae.save_pretrained(base / "vae")
    gen.text_encoder.save_pretrained(base / "text_encoder")
    gen.tokenizer.save_pretrained(base / "tokenizer")
    weights = convert.make_lora_weights(gen.unet, RANK, seed=3)  # same architecture as the student
    torch.save(weights, root / "unet_lora.pt")
    return base, root / "unet_lora.pt", teacher.state_dict(), weights


def test_make_lora_weights_format(gen):
    targets = convert.lora_targets(gen.unet)
    weights = convert.make_lora_weights(gen.unet, RANK, seed=0)
    assert len(weights) == 2 * len(targets)
    names = [n for n, _ in targets]
    assert names[:3] == ["conv_in", "time_embedding.linear_1", "time_embedding.cond_proj"]
    assert names.index("up_blocks.0.resnets.0.conv1") < names.index("mid_block.resnets.0.conv1")  # registration order
    i = names.index("conv_in")  # 4 input channels: rank clamped to 4
    assert weights[2 * i].shape == (32, 4, 1, 1) and weights[2 * i + 1].shape == (4, 4, 3, 3)
    i = next(k for k, n in enumerate(names) if "temp_convs" in n)
    assert weights[2 * i].shape == (32, RANK, 1, 1, 1) and weights[2 * i + 1].shape == (RANK, 32, 3, 1, 1)


def test_convert_merges_lora(fake_release, tmp_path: Path):
    base, lora, teacher_sd, weights = fake_release
    out = tmp_path / "g0"
    assert convert.main(["--base", str(base), "--lora", str(lora), "--out", str(out), "--rank", str(RANK)]) == 0
    assert not (tmp_path / "g0.tmp").exists() and (out / "convert.meta.json").is_file()
    g = load_generator(out)
    assert g.config.kind == "t2v_turbo_ms" and (g.config.num_frames, g.config.height) == (16, 256)
    assert g.config.steps == 4 and g.config.guidance == 7.5 and g.config.fps == 8
    assert g.unet.config.time_cond_proj_dim == 256
    names = [n for n, _ in convert.lora_targets(g.unet)]
    sd = g.unet.state_dict()
    checked = [
        "conv_in",  # Conv2d, rank clamped to 4
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",  # Linear
        "mid_block.temp_convs.1.conv4.3",  # Conv3d (3, 1, 1)
        "conv_out",  # the last target
    ]
    for name in checked:
        k = names.index(name)
        up, down = weights[2 * k], weights[2 * k + 1]
        w0 = teacher_sd[name + ".weight"]
        want = w0 + (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        torch.testing.assert_close(sd[name + ".weight"], want, rtol=0, atol=1e-6)
        assert not torch.allclose(sd[name + ".weight"], w0)
    # cond_proj: nn.Linear's default init drawn with --seed (0), plus its LoRA delta
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        init = torch.nn.Linear(256, 32, bias=False).weight.detach()
    k = names.index("time_embedding.cond_proj")
    torch.testing.assert_close(sd["time_embedding.cond_proj.weight"], init + weights[2 * k] @ weights[2 * k + 1])
    assert torch.equal(sd["time_embedding.linear_1.bias"], teacher_sd["time_embedding.linear_1.bias"])  # no LoRA
    assert convert.main(["--base", str(base), "--lora", str(lora), "--out", str(out)]) == 2  # exists


def test_convert_rejects_bad_lists(gen, fake_release, tmp_path: Path):
    from diffusers import UNet3DConditionModel

    unet = UNet3DConditionModel.from_config(gen.unet.config)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    weights = convert.make_lora_weights(unet, RANK, seed=0)
    n = len(weights) // 2
    with pytest.raises(ValueError, match=rf"{len(weights) - 1} tensors, expected {len(weights)} .* {n} Linear"):
        convert.merge_lora(unet, weights[:-1], RANK, source="short.pt")
    wrong = convert.make_lora_weights(unet, RANK // 2, seed=0)
    with pytest.raises(
        ValueError,
        match=r"up weight of module 'time_embedding.linear_1' \(target 2 of .*"
        r"shape \(128, 4\), expected \(128, 8\) for --rank 8",
    ):
        convert.merge_lora(unet, wrong, RANK, source="wrong.pt")
    swapped = list(weights)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match="'conv_in'"):
        convert.merge_lora(unet, swapped, RANK)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # untouched on error

    base, _, _, _ = fake_release
    torch.save(weights[:-1], tmp_path / "short.pt")
    assert convert.main(["--base", str(base), "--lora", str(tmp_path / "short.pt"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    assert convert.main(["--base", str(tmp_path / "nobase"), "--lora", str(tmp_path / "short.pt"), "--out", "x"]) == 2


def test_build_student_rejects_foreign_weights(gen, fake_release, tmp_path: Path):
    import shutil

    from safetensors.torch import load_file, save_file

    base, _, _, _ = fake_release
    other = tmp_path / "base"
    shutil.copytree(base / "unet", other / "unet")
    f = other / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["extra.weight"] = torch.zeros(1)
    del sd["conv_out.bias"]
    save_file(sd, f)
    with pytest.raises(ValueError, match=r"missing=\['conv_out.bias'\].*unexpected=\['extra.weight'\]"):
        convert.build_student(other)


def test_build_student_reads_bin_weights(fake_release, tmp_path: Path):
    import shutil

    from safetensors.torch import load_file

    base, _, teacher_sd, _ = fake_release
    other = tmp_path / "base"
    shutil.copytree(base / "unet", other / "unet")
    f = other / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(f), other / "unet" / "diffusion_pytorch_model.bin")
    f.unlink()
    unet = convert.build_student(other, seed=0)
    assert unet.config.time_cond_proj_dim == 256
    assert torch.equal(unet.state_dict()["conv_in.weight"], teacher_sd["conv_in.weight"])
    (other / "unet" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no UNet weights found"):
        convert.build_student(other)
