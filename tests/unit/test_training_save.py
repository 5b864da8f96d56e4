"""Where the trainers put the model before training and how they save it: `training_device` (the held-out
evaluation before training runs on the rank's GPU, not on the CPU where the model was loaded) and `save_final`
(under ZeRO-3 the gathered weights, never the in-memory shards)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vqinsight.training import is_zero3, save_final, training_device


@pytest.mark.parametrize(
    ("cuda", "local_rank", "want"), [(True, None, "cuda:0"), (True, "3", "cuda:3"), (False, "3", "cpu")]
)
def test_training_device_is_the_ranks_gpu(monkeypatch, cuda, local_rank, want):
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert training_device(cuda) == want


class _Saver:
    def __init__(self, name):
        self.name = name

    def save_pretrained(self, d, **kw):
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / f"{self.name}.txt").write_text(self.name)


def _trainer(zero_stage, main=True):
    calls = []
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)

    def save_model(d):
        calls.append(("save_model", d))
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "gathered.safetensors").write_text("full")
        (Path(d) / "training_args.bin").write_text("pickle")

    acc = SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=plugin),
        is_main_process=main,
        wait_for_everyone=lambda: calls.append(("barrier",)),
    )
    t = SimpleNamespace(
        accelerator=acc, is_deepspeed_enabled=plugin is not None, model=_Saver("shards"), save_model=save_model
    )
    return t, calls


def test_save_final_under_zero3_gathers_through_save_model(tmp_path):
    t, calls = _trainer(3)
    assert is_zero3(t)
    out = tmp_path / "model"
    (out).mkdir()
    (out / "stale.txt").write_text("old")
    assert save_final(t, _Saver("processor"), out) == out
    assert sorted(p.name for p in out.iterdir()) == ["gathered.safetensors", "processor.txt"]
    assert [c[0] for c in calls] == ["barrier", "save_model", "barrier"]
    assert not (tmp_path / "model.tmp").exists()


def test_save_final_without_zero3_saves_the_in_memory_model_on_the_main_process(tmp_path):
    for stage in (None, 2):
        t, calls = _trainer(stage)
        assert not is_zero3(t)
        out = tmp_path / f"m{stage}"
        save_final(t, _Saver("processor"), out)
        assert sorted(p.name for p in out.iterdir()) == ["processor.txt", "shards.txt"] and calls == []
    t, calls = _trainer(None, main=False)
    save_final(t, _Saver("processor"), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_save_final_under_zero3_on_another_rank_joins_the_gather_but_writes_nothing_itself(tmp_path):
    t, calls = _trainer(3, main=False)
    out = tmp_path / "model"
    save_final(t, _Saver("processor"), out)
    assert [c[0] for c in calls] == ["barrier", "save_model", "barrier"] and not out.exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vqinsight.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    build_tiny(root / "tiny", seed=0)
    return root / "tiny"


def _load(path):
    from vqinsight.models.load import load_model_and_processor

    return load_model_and_processor(str(path), dtype="float32")[0]


def test_checkpoint_weights_load_under_the_modules_names(tiny, tmp_path):
    """save_pretrained writes Qwen2.5-VL's weights under their original names (visual.*, model.layers.*), which a
    plain load_state_dict does not match at all; load_checkpoint_weights loads every one, tied weights included."""
    import safetensors.torch
    import torch

    from vqinsight.training import load_checkpoint_weights

    trained = _load(tiny)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    trained.save_pretrained(tmp_path / "checkpoint-3", safe_serialization=True)
    fresh = _load(tiny)
    raw = fresh.load_state_dict(
        safetensors.torch.load_file(str(tmp_path / "checkpoint-3" / "model.safetensors")), False
    )
    assert raw.missing_keys  # what the Trainer's own resume does: weights left at the base model's
    assert load_checkpoint_weights(fresh, tmp_path / "checkpoint-3")
    want, got = trained.state_dict(), fresh.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_checkpoint_of_another_model_is_an_error_and_no_weights_file_defers(tiny, tmp_path):
    import safetensors.torch

    from vqinsight.training import load_checkpoint_weights

    model = _load(tiny)
    model.save_pretrained(tmp_path / "ck", safe_serialization=True)
    f = tmp_path / "ck" / "model.safetensors"
    sd = safetensors.torch.load_file(str(f))
    dropped = sorted(sd)[0]
    del sd[dropped]
    safetensors.torch.save_file(sd, str(f))
    with pytest.raises(RuntimeError, match="does not match the model"):
        load_checkpoint_weights(model, tmp_path / "ck")
    (tmp_path / "adapter").mkdir()
    assert load_checkpoint_weights(model, tmp_path / "adapter") is False


def test_resume_mixin_uses_the_trainers_own_loading_for_deepspeed_and_adapters(monkeypatch):
    from vqinsight import training

    calls = []

    class Base:
        def _load_from_checkpoint(self, ck, model=None):
            calls.append(("trainer", ck))

    class T(training.CheckpointResume, Base):
        def __init__(self, deepspeed=False, peft=False):
            self.is_deepspeed_enabled, self.is_fsdp_enabled = deepspeed, False
            self.model = SimpleNamespace(peft_config={}) if peft else SimpleNamespace()

    monkeypatch.setattr(training, "load_checkpoint_weights", lambda m, ck: calls.append(("ours", ck)) or True)
    T()._load_from_checkpoint("c1")
    T(deepspeed=True)._load_from_checkpoint("c2")
    T(peft=True)._load_from_checkpoint("c3")
    assert calls == [("ours", "c1"), ("trainer", "c2"), ("trainer", "c3")]
