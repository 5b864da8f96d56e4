"""Tests of completion parsing: tags, scores, dimensions, choices; none of them may ever raise."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqinsight.parsing import (
    completion_text,
    extract_answer,
    extract_think,
    is_well_formed,
    parse_choice,
    parse_dimensions,
    parse_score,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text built from fragments that matter to the parsers, so the fuzzer hits tags, numbers and keywords.
_FRAGMENTS = st.sampled_from(
    [
        "<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", "Video A", "video b", "(a)", " a ", "yes", "no",
        "tie", "same", "3.5", "-1", "1e400", "nan", "inf", "{", "}", '"spatial":', '"temporal":', '"consistency":',
        "alignment=", ":", ",", " ", "\n", "é", "视频", "\x00", "9" * 50,
    ]
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=200), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5)), max_size=30).map("".join))
ANY = st.one_of(
    TEXT, st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=3), st.binary(max_size=5)
)


# --- completion_text -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain", "plain"),
        ("", ""),
        ([{"role": "assistant", "content": "<answer>3</answer>"}], "<answer>3</answer>"),
        ([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "ab"),
        ([{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}], "x"),
        ([{"role": "user", "content": "ignored"}, {"role": "assistant", "content": "kept"}], "kept"),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "assistant", "content": [{"type": "text", "text": 5}]}], ""),
        ([], ""),
        (["not a message"], ""),
        (None, ""),
        (42, ""),
        ({"role": "assistant", "content": "dict, not list"}, ""),
        (b"bytes", ""),
    ],
)
def test_completion_text(completion: Any, expected: str) -> None:
    assert completion_text(completion) == expected


# --- extract_think / extract_answer ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "think", "answer"),
    [
        ("<think>why</think><answer>3.5</answer>", "why", "3.5"),
        ("<think>\n why \n</think>\n<answer>\n 3.5 \n</answer>", "why", "3.5"),
        ("<THINK>x</Think><Answer>4</ANSWER>", "x", "4"),
        ("<answer>1</answer><answer>2</answer>", None, "2"),  # last block wins
        ("<answer><answer>3</answer></answer>", None, "3"),  # nested: innermost
        ("<answer>a<answer>b</answer>", None, "b"),
        ("<answer>3", None, None),  # unclosed
        ("3</answer>", None, None),
        ("<think>t</think>", "t", None),
        ("<answer></answer>", None, ""),
        ("<answer>multi\nline</answer>", None, "multi\nline"),
        ("<answer>视频 A ✓</answer>", None, "视频 A ✓"),
        ("no tags at all", None, None),
        ("", None, None),
        (None, None, None),
        (3.5, None, None),
        (["<answer>1</answer>"], None, None),
    ],
)
def test_extract_blocks(text: Any, think: str | None, answer: str | None) -> None:
    assert extract_think(text) == think
    assert extract_answer(text) == answer


# --- is_well_formed --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>r</think><answer>3</answer>", True),
        ("  <think>r\nr</think>\n\n<answer>3</answer>\n", True),
        ("<think></think><answer></answer>", True),
        ("<think>r</think>", False),  # missing answer
        ("<answer>3</answer>", False),  # missing think
        ("<answer>3</answer><think>r</think>", False),  # wrong order
        ("<think>r</think><answer>3</answer><answer>4</answer>", False),  # repeated answer
        ("<think>r</think><think>s</think><answer>3</answer>", False),  # repeated think
        ("<think><think>r</think></think><answer>3</answer>", False),  # nested
        ("<think>r</think><answer><answer>3</answer></answer>", False),
        ("<think>r<answer>3</answer></think><answer>3</answer>", False),
        ("<think>r</think> text <answer>3</answer>", False),  # text between blocks
        ("prefix <think>r</think><answer>3</answer>", False),
        ("<think>r</think><answer>3</answer> suffix", False),
        ("<THINK>r</THINK><ANSWER>3</ANSWER>", False),  # official check is case-sensitive
        ("<think>r</think><answer>3", False),  # unclosed
        ("", False),
        (None, False),
        (123, False),
    ],
)
def test_is_well_formed(text: Any, expected: bool) -> None:
    assert is_well_formed(text) is expected


# --- parse_score -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("3.5", 3.5),
        ("Score: 3.50", 3.5),
        ('{"rating": 4.2}', 4.2),
        ("-1", -1.0),
        ("+2", 2.0),
        ("1e2", 100.0),
        ("2.5E-1", 0.25),
        (".5", 0.5),
        ("4.", 4.0),
        ("3.5 out of 5", 3.5),
        ("The score is 4/5", 4.0),
        ("  \n 2.75 \n", 2.75),
        ("１２", None),  # full-width digits are not ASCII
        ("٣", None),
        ("1000000", 1e6),
        ("1000001", None),  # absurd magnitude
        ("-1e7", None),
        ("1e400", None),  # overflows to inf
        ("9" * 500, None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e999 then 3", None),  # a garbage first number rejects the answer
        ("", None),
        ("no number", None),
        (None, None),
        (4.0, None),  # non-string
        (["3"], None),
    ],
)
def test_parse_score(answer: Any, expected: float | None) -> None:
    assert parse_score(answer) == expected


# --- parse_dimensions ------------------------------------------------------------------------------------------------
_D = {"spatial": 3.0, "temporal": 4.5, "alignment": 2.0}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"spatial": 3, "temporal": 4.5, "alignment": 2}', _D),
        ('{"spatial": 3, "temporal": 4.5, "consistency": 2}', _D),
        ('{"Spatial": 3, "TEMPORAL": 4.5, "Alignment": 2.0}', _D),
        ('{"spatial_quality": 3, "temporal quality": 4.5, "alignment_score": 2}', _D),
        ('{"spatial": "3", "temporal": "4.5", "alignment": "2"}', _D),
        ('{"spatial": 3, "temporal": 4.5, "alignment": 2, "consistency": 5}', _D),  # alignment wins over alias
        ('{"spatial": 3, "temporal": 4.5, "consistency": 5, "alignment": 2}', _D),
        ('Result: {"spatial": 3, "temporal": 4.5, "alignment": 2} done', _D),
        ('"spatial": 3, "temporal": 4.5, "alignment": 2', _D),  # no braces
        ("spatial: 3, temporal = 4.5, consistency: 2", _D),
        ("Spatial Quality: 3\nTemporal Quality: 4.5\nText-video alignment: 2", _D),
        ("{'spatial': 3, 'temporal': 4.5, 'alignment': 2}", _D),  # python-style quotes: loose parser
        ('{"spatial": 3, "temporal": 4.5}', None),  # missing dimension
        ('{"spatial": NaN, "temporal": 4.5, "alignment": 2}', None),
        ('{"spatial": Infinity, "temporal": 4.5, "alignment": 2}', None),
        ('{"spatial": 1e400, "temporal": 4.5, "alignment": 2}', None),
        ('{"spatial": 1e9, "temporal": 4.5, "alignment": 2}', None),
        ('{"spatial": true, "temporal": 4.5, "alignment": 2}', None),
        ('{"spatial": null, "temporal": 4.5, "alignment": 2}', None),
        ('{"spatial": [3], "temporal": 4.5, "alignment": 2}', None),
        ('{"spatial": ' + "9" * 5000 + ', "temporal": 4.5, "alignment": 2}', None),
        ("[" * 10000 + "]" * 10000, None),
        ("{" * 10000, None),
        ("3, 4.5, 2", {"spatial": 3.0, "temporal": 4.5, "alignment": 2.0}),  # the short style's compact form
        ("", None),
        (None, None),
        ({"spatial": 3, "temporal": 4.5, "alignment": 2}, None),  # non-string
    ],
)
def test_parse_dimensions(answer: Any, expected: dict[str, float] | None) -> None:
    assert parse_dimensions(answer) == expected


# --- parse_choice --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Video A", "A"),
        ("A", "A"),
        ("a", "A"),
        ("video a.", "A"),
        ("(A)", "A"),
        ("**Video B**", "B"),
        ("'Video B'", "B"),
        ("VideoB", "B"),
        ("Option B", "B"),
        ("Answer: B", "B"),
        ("The final answer is Video A.", "A"),
        ("Video 1", "A"),
        ("the second video", "B"),
        ("I prefer Video B because it is smoother.", "B"),
        ("Video A is better than Video B.", "A"),
        ("Video B wins over Video A", "B"),
        ("Overall, (b) has fewer artifacts", "B"),
        ("a video", None),  # article, not a verdict
        ("A video with better motion", None),
        ("This is a better one", None),
        ("Video A or Video B", None),  # both mentioned, no verdict
        ("Video A is better. No, Video B is better.", None),
        ("Video about cats", None),
        ("tie", "tie"),
        ("Tie.", "tie"),
        ("same", "tie"),
        ("equal", "tie"),
        ("similar", "tie"),
        ("They are the same", "tie"),
        ("Video A and Video B are equally good", "tie"),
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("YES", "yes"),
        ("no", "no"),
        ("No, the motion is not smooth", "no"),
        ("Yes, there is no blur", "yes"),
        ("The answer is yes.", "yes"),
        ("I think so: yes", "yes"),
        ("maybe", None),
        ("the motion is similar, so yes", None),  # tie word and yes: ambiguous
        ("nothing", None),  # 'no' must be a whole word
        ("", None),
        ("   ", None),
        ("视频 A", None),
        (None, None),
        (1, None),
        (["A"], None),
    ],
)
def test_parse_choice(answer: Any, expected: str | None) -> None:
    assert parse_choice(answer) == expected


# --- fuzz: never raise, always the documented types -----------------------------------------------------------------
@FUZZ
@given(ANY)
def test_fuzz_text_functions_never_raise(text: Any) -> None:
    assert isinstance(completion_text(text), str)
    for fn in (extract_think, extract_answer):
        out = fn(text)
        assert out is None or isinstance(out, str)
    assert isinstance(is_well_formed(text), bool)


@FUZZ
@given(ANY)
def test_fuzz_value_parsers_never_raise(text: Any) -> None:
    score = parse_score(text)
    assert score is None or (isinstance(score, float) and abs(score) <= 1e6)
    dims = parse_dimensions(text)
    assert dims is None or (
        set(dims) == {"spatial", "temporal", "alignment"} and all(abs(v) <= 1e6 for v in dims.values())
    )
    assert parse_choice(text) in (None, "A", "B", "tie", "yes", "no")


@FUZZ
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), TEXT)
def test_fuzz_parse_score_round_trip(value: float, noise: str) -> None:
    noise = "".join(ch for ch in noise if not ch.isascii() or (ch.isalpha() and ch not in "eE"))
    assert parse_score(f"{noise[:10]} {value!r}") == pytest.approx(value)


@pytest.mark.slow
@FUZZ
@given(st.lists(st.one_of(_FRAGMENTS, TEXT), max_size=5))
def test_fuzz_conversational_matches_plain(chunks: list[str]) -> None:
    plain = "".join(chunks)
    conversational = [{"role": "assistant", "content": [{"type": "text", "text": c} for c in chunks]}]
    assert completion_text(conversational) == plain
    assert is_well_formed(completion_text(conversational)) == is_well_formed(plain)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("3 4 5", {"spatial": 3.0, "temporal": 4.0, "alignment": 5.0}),
        (" 3.25, 4.5, 1 ", {"spatial": 3.25, "temporal": 4.5, "alignment": 1.0}),
        ("3 4", None),
        ("3 4 5 6", None),
        ("scores 3 4 5", None),
    ],
)
def test_parse_dimensions_compact_positional_form(answer, expected):
    assert parse_dimensions(answer) == expected


# --- the task's scale: a score off it is unparsed ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "scale", "expected"),
    [
        ("3333333", (1.0, 5.0), None),
        ("6.0", (1.0, 5.0), None),
        ("0.99", (1.0, 5.0), None),
        ("-3", (1.0, 5.0), None),
        ("5", (1.0, 5.0), 5.0),  # the ends are on the scale
        ("1.0", (1.0, 5.0), 1.0),
        ("Score: 4.2", (1.0, 5.0), 4.2),
        ("87.5", (0.0, 100.0), 87.5),
        ("333333", None, 333333.0),  # no scale: any finite number up to MAX_ABS_VALUE
    ],
)
def test_parse_score_on_scale(answer: str, scale: tuple[float, float] | None, expected: float | None) -> None:
    assert parse_score(answer, scale) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"spatial": 3, "temporal": 4, "alignment": 5}', {"spatial": 3.0, "temporal": 4.0, "alignment": 5.0}),
        ('{"spatial": 3, "temporal": 40, "alignment": 5}', None),  # one dimension off: the whole answer
        ("spatial: 0.5, temporal: 4, alignment: 5", None),
        ("3 4 6", None),
    ],
)
def test_parse_dimensions_on_scale(answer: str, expected: dict[str, float] | None) -> None:
    assert parse_dimensions(answer, (1.0, 5.0)) == expected
