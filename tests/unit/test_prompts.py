"""Tests of the prompt templates and the chat builder."""

from __future__ import annotations

import pytest

from vqinsight.prompts import SYSTEM_PROMPT, TASKS, build_messages, user_text


def _user_text(messages: list[dict]) -> str:
    return messages[-1]["content"][-1]["text"]


def test_tasks_constant() -> None:
    assert TASKS == ("image_score", "video_score", "multidim_score", "comparison", "vqa")


def test_system_prompt_wording() -> None:
    assert SYSTEM_PROMPT.startswith("A conversation between User and Assistant.")
    assert "<think></think> and <answer></answer> tags." in SYSTEM_PROMPT


@pytest.mark.parametrize(
    ("task", "kwargs", "expected_parts"),
    [
        ("image_score", {"media": ["a.png"]}, [("image", "a.png"), ("text", None)]),
        ("video_score", {"media": ["a.mp4"]}, [("video", "a.mp4"), ("text", None)]),
        ("video_score", {"media": ["a.png"], "media_type": "image"}, [("image", "a.png"), ("text", None)]),
        ("multidim_score", {"media": ["a.mp4"], "prompt": "a cat"}, [("video", "a.mp4"), ("text", None)]),
        ("vqa", {"media": ["a.mp4"], "prompt": "p", "question": "Is it sharp?"}, [("video", "a.mp4"), ("text", None)]),
        (
            "comparison",
            {"media": ["a.mp4", "b.mp4"], "prompt": "p"},
            [("text", "Video A:"), ("video", "a.mp4"), ("text", "Video B:"), ("video", "b.mp4"), ("text", None)],
        ),
    ],
)
def test_build_messages_layout(task: str, kwargs: dict, expected_parts: list[tuple[str, str | None]]) -> None:
    messages = build_messages(task, **kwargs)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == [{"type": "text", "text": SYSTEM_PROMPT}]
    parts = messages[1]["content"]
    assert len(parts) == len(expected_parts)
    for part, (kind, value) in zip(parts, expected_parts, strict=True):
        assert part["type"] == kind
        if value is not None:
            assert part[kind] == value


def test_no_system_message() -> None:
    messages = build_messages("video_score", media=["x.mp4"], system=False)
    assert [m["role"] for m in messages] == ["user"]


def test_media_item_passed_through_unchanged() -> None:
    item = object()
    messages = build_messages("video_score", media=[item])
    assert messages[-1]["content"][0]["video"] is item


@pytest.mark.parametrize(
    ("task", "kwargs", "must_contain", "must_not_contain"),
    [
        ("image_score", {}, ["quality of this picture", "between 1 and 5", "<answer> </answer>"], ["video"]),
        ("video_score", {"scale": (0, 10)}, ["quality of this video", "between 0 and 10", "0 representing"], []),
        ("video_score", {"scale": (1.5, 4.5)}, ["between 1.5 and 4.5"], []),
        (
            "multidim_score",
            {"prompt": "a dog surfing"},
            ['prompt: "a dog surfing"', "spatial quality, temporal quality, and text-video alignment", '"alignment"'],
            [],
        ),
        ("multidim_score", {}, ["Rate it on three dimensions"], ["prompt:"]),
        (
            "comparison",
            {"prompt": "a red car"},
            ['generated from the prompt: "a red car".\nWhich video', "'Video A'"],
            [],
        ),
        ("comparison", {}, ["Which video is better?", "'Video B'"], ["generated from the prompt"]),
        (
            "vqa",
            {"prompt": "p", "question": "Is the motion smooth?"},
            ["Question: Is the motion smooth?", "'yes'"],
            [],
        ),
        ("vqa", {"question": "Is it ok?"}, ["Question: Is it ok?"], ["prompt:"]),
    ],
)
def test_user_text(task: str, kwargs: dict, must_contain: list[str], must_not_contain: list[str]) -> None:
    media = ["a", "b"] if task == "comparison" else ["a"]
    text = _user_text(build_messages(task, media=media, **kwargs))
    assert text == user_text(task, **{k: v for k, v in kwargs.items() if k != "media_type"})
    for s in must_contain:
        assert s in text
    for s in must_not_contain:
        assert s not in text


@pytest.mark.parametrize(
    ("task", "kwargs", "match"),
    [
        ("score", {"media": ["a"]}, "valid tasks: image_score, video_score"),
        ("", {"media": ["a"]}, "valid tasks"),
        ("comparison", {"media": ["a"]}, "exactly 2"),
        ("vqa", {"media": ["a"], "prompt": "p"}, "question"),
        ("video_score", {"media": ["a"], "media_type": "audio"}, "media_type"),
    ],
)
def test_build_messages_errors(task: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_messages(task, **kwargs)


def test_short_style_is_a_task_tag_without_system_prompt():
    from vqinsight.prompts import build_messages

    m = build_messages("image_score", media=["x"], style="short")
    assert m == [{"role": "user", "content": [{"type": "image", "image": "x"}]}]
    m = build_messages("comparison", media=["a", "b"], style="short", system=True)
    assert [p.get("text") for p in m[0]["content"]] == ["A:", None, "B:", None, "better?"]
    m = build_messages("vqa", media=["a"], question="Is it dark?", style="short")
    assert m[0]["content"][-1] == {"type": "text", "text": "Is it dark?"}
    with pytest.raises(ValueError, match="style"):
        build_messages("vqa", media=["a"], question="q", style="tiny")
