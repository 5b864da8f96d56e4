"""Tiny offline Qwen2.5-VL builder and the judge loader: round trip, chat template, tags, pixels, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vqinsight.models import load as load_mod
from vqinsight.models.load import load_model_and_processor, vision_token_ids
from vqinsight.models.tiny import TAGS, build_model, build_tiny, build_tokenizer, main


def _video(t: int = 4, h: int = 56, w: int = 84, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _msgs(*videos: np.ndarray, text: str = "Rate the quality 1-5.", system: str | None = None) -> list[dict]:
    content = [{"type": "video", "video": v} for v in videos] + [{"type": "text", "text": text}]
    msgs = [{"role": "user", "content": content}]
    if system is not None:
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _inputs(processor, msgs: list[dict]):
    return processor.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path):
    return load_model_and_processor(str(tiny_dir))


def test_build_writes_safetensors_and_meta(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert "model.safetensors" in names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert {"config.json", "processor_config.json", "tokenizer.json", "meta.json"} <= names
    assert not tiny_dir.with_name("tiny.tmp").exists()
    meta = json.loads((tiny_dir / "meta.json").read_text())
    assert meta["config"]["seed"] == 0
    assert meta["config"]["video_pixels"] == [784, 4704]


def test_video_forward_and_generate(loaded) -> None:
    model, processor = loaded
    inputs = _inputs(processor, _msgs(_video()))
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 6]]
    ids = inputs["input_ids"][0]
    assert int((ids == model.config.video_token_id).sum()) == 12  # 2*4*6 patches / merge 2x2
    assert "mm_token_type_ids" in inputs
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, ids.shape[0], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    suppress = vision_token_ids(model)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=True, suppress_tokens=suppress)
    new = out[0, ids.shape[0] :]
    assert 1 <= new.numel() <= 5
    assert not set(new.tolist()) & set(suppress)


def test_two_videos_in_one_prompt(loaded) -> None:
    model, processor = loaded
    inputs = _inputs(processor, _msgs(_video(seed=1), _video(seed=2), text="Which video is better?"))
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 6], [2, 4, 6]]
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 24
    with torch.no_grad():
        model(**inputs)
    model.generate(**inputs, max_new_tokens=3, suppress_tokens=vision_token_ids(model))


def test_image_tokens(loaded) -> None:
    model, processor = loaded
    img = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Rate."}]}]
    inputs = _inputs(processor, msgs)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 4


def test_chat_template_system_prompt_only_when_given(loaded) -> None:
    _, processor = loaded
    plain = processor.apply_chat_template(_msgs(_video()), add_generation_prompt=True, tokenize=False)
    assert "system" not in plain
    assert plain.startswith("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Rate")
    assert plain.endswith("<|im_end|>\n<|im_start|>assistant\n")
    with_sys = processor.apply_chat_template(_msgs(_video(), system="Be strict."), add_generation_prompt=True)
    assert with_sys.startswith("<|im_start|>system\nBe strict.<|im_end|>\n<|im_start|>user\n")
    no_gen = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert no_gen == "<|im_start|>user\nhi<|im_end|>\n"


def test_tags_are_single_tokens_kept_by_decode(loaded) -> None:
    _, processor = loaded
    tok = processor.tokenizer
    text = "<think>sharp, no blur</think><answer>4</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for tag in TAGS:
        tid = tok.convert_tokens_to_ids(tag)
        assert tok(tag, add_special_tokens=False)["input_ids"] == [tid]
        assert tid in ids
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.batch_decode([ids + [eos]], skip_special_tokens=True) == [text]
    assert tok.padding_side == "left"


def test_build_is_deterministic() -> None:
    tok = build_tokenizer()
    a, b = build_model(tok, seed=3).state_dict(), build_model(tok, seed=3).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model(tok, seed=4).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_saved_weights_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    other = build_tiny(tmp_path / "again")
    a, b = load_file(tiny_dir / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stale_tmp_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "m.tmp"
    stale.mkdir()
    (stale / "junk").write_text("x")
    out = build_tiny(tmp_path / "m", hidden=32, layers=1)
    assert not stale.exists() and not (out / "junk").exists()
    assert json.loads((out / "config.json").read_text())["text_config"]["hidden_size"] == 32


def test_pixel_override_changes_grid(tiny_dir: Path) -> None:
    model, processor = load_model_and_processor(
        str(tiny_dir), video_pixels=(12544, 12544), image_pixels=(12544, 12544)
    )
    inputs = _inputs(processor, _msgs(_video()))
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 10]]  # 56x84 upscaled to 112x140
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 40
    img = np.zeros((56, 56, 3), dtype=np.uint8)
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[img], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]]
    _, small = load_model_and_processor(str(tiny_dir), video_pixels=(784, 784))
    assert _inputs(small, _msgs(_video()))["video_grid_thw"].tolist() == [[2, 2, 2]]
    with pytest.raises(ValueError, match="0 < min <= max"):
        load_model_and_processor(str(tiny_dir), video_pixels=(5000, 100))


@pytest.mark.parametrize("name", ["results/demo/models/nope", "./nope", "/nonexistent/tiny", "a/b/c"])
def test_missing_local_path(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="demo_base") as exc:
        load_model_and_processor(name)
    assert name in str(exc.value)


def test_pickle_only_dir_rejected(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_dir / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"not a pickle, must never be opened")
    with pytest.raises(FileNotFoundError, match="safetensors") as exc:
        load_model_and_processor(str(bad))
    assert "pytorch_model.bin" in str(exc.value)


def test_hub_id_unavailable_is_clear_oserror(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(load_mod.Qwen2_5_VLForConditionalGeneration, "from_pretrained", offline)
    with pytest.raises(OSError, match="HF_HOME") as exc:
        load_model_and_processor("SomeOrg/Some-VL-Model")
    assert "SomeOrg/Some-VL-Model" in str(exc.value) and "pre-download" in str(exc.value)


def test_load_options(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vqinsight.models.load"):
        model, _ = load_model_and_processor(str(tiny_dir), trust_remote_code=True, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert any(r.levelno == logging.WARNING and "remote code will run" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="dtype"):
        load_model_and_processor(str(tiny_dir), dtype="float8")


def test_cli_main(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--seed", "1", "--hidden", "32", "--layers", "1", "--vis-hidden", "16"]
    assert main([*args, "--vis-depth", "1", "--image-pixels", "784", "3136", "--video-pixels", "784", "784"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["hidden_size"] == 32 and cfg["vision_config"]["depth"] == 1
    meta = json.loads((out / "meta.json").read_text())["config"]
    assert meta["seed"] == 1 and meta["image_pixels"] == [784, 3136]
    model, processor = load_model_and_processor(str(out))
    assert _inputs(processor, _msgs(_video()))["video_grid_thw"].tolist() == [[2, 2, 2]]
