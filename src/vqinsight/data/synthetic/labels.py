"""The known label function of the synthetic data: degradation severities → quality, MOS, preference, yes/no answers.

quality per dimension in [0, 1]:
  spatial   = 1 − clip(Σ w_k s_k) over exposure, blur, noise, compression (exposure has the largest weight),
  temporal  = 1 − clip(Σ w_k s_k) over stutter, freeze, drop, flicker, jitter,
  alignment = 1 − mismatch severity.
overall = weighted mean: AIGC sets (0.5, 0.3, 0.2); natural videos spatial + temporal (0.5, 0.3 renormalised);
images spatial only (they have no temporal degradations).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vqinsight.data.synthetic.degrade import Degradations

SPATIAL_WEIGHTS: dict[str, float] = {"exposure": 1.0, "blur": 0.6, "noise": 0.5, "compression": 0.5}
TEMPORAL_WEIGHTS: dict[str, float] = {"stutter": 0.6, "freeze": 0.6, "drop": 0.6, "flicker": 0.7, "jitter": 0.5}
OVERALL_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "aigc": (0.5, 0.3, 0.2),
    "video": (0.5 / 0.8, 0.3 / 0.8, 0.0),
    "image": (1.0, 0.0, 0.0),
}
RAW_RANGES: dict[str, tuple[float, float]] = {
    "koniq": (1.0, 5.0),
    "lsvq": (0.0, 100.0),
    "konvid": (1.0, 5.0),
    "livevqc": (0.0, 100.0),
    "lgvq": (0.0, 100.0),
}
MOS_NOISE_STD = 0.03
TIE_MARGIN = 0.05
BOTHBAD_Q = 0.35
VQA_THRESHOLD = 0.3
VQA_AMBIGUOUS = (0.25, 0.35)  # continuous severities in this band are marked not applicable (meta_mask 0)

# (family, question, degradations it covers); one question per degradation family, in meta_qa_en.txt order
VQA_QUESTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("exposure", "Is the video well exposed, neither too dark nor too bright?", ("exposure",)),
    ("blur", "Is the video free of blur?", ("blur",)),
    ("noise", "Is the video free of noise?", ("noise",)),
    ("compression", "Is the video free of compression artifacts?", ("compression",)),
    ("motion", "Is the motion smooth, without stutter, dropped or frozen frames?", ("stutter", "freeze", "drop")),
    ("flicker", "Is the brightness stable, without flicker?", ("flicker",)),
    ("jitter", "Is the camera steady, without shaking?", ("jitter",)),
    ("alignment", "Does the video match the prompt?", ("mismatch",)),
)
# VisionReward-style checklist annotation: dimension → the degradations that lower it
ANNOTATION_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "alignment": ("mismatch",),
    "clear": ("exposure", "blur", "noise", "compression"),
    "movement smoothness": ("stutter", "freeze", "drop"),
    "image quality stability": ("flicker", "jitter"),
}


@dataclass(frozen=True)
class Quality:
    """Quality in [0, 1] per dimension and overall."""

    spatial: float
    temporal: float
    alignment: float
    overall: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict."""
        return asdict(self)


def _one_minus_weighted(deg: Degradations, weights: dict[str, float]) -> float:
    return float(1.0 - np.clip(sum(w * deg.get(k) for k, w in weights.items()), 0.0, 1.0))


def quality(deg: Degradations, kind: str = "aigc") -> Quality:
    """Quality of an item with degradations ``deg``; ``kind`` ∈ {aigc, video, image} picks the overall weights."""
    if kind not in OVERALL_WEIGHTS:
        raise ValueError(f"kind must be one of {tuple(OVERALL_WEIGHTS)}, got {kind!r}")
    sp = _one_minus_weighted(deg, SPATIAL_WEIGHTS)
    tp = _one_minus_weighted(deg, TEMPORAL_WEIGHTS)
    al = float(1.0 - np.clip(deg.get("mismatch"), 0.0, 1.0))
    ws, wt, wa = OVERALL_WEIGHTS[kind]
    return Quality(sp, tp, al, float(ws * sp + wt * tp + wa * al))


def raw_mos(
    q: float, raw_range: tuple[float, float], rng: np.random.Generator | None = None, noise_std: float = MOS_NOISE_STD
) -> float:
    """``raw_min + (raw_max − raw_min)·clip(q + N(0, noise_std))``; no noise when ``rng`` is None."""
    lo, hi = raw_range
    eps = float(rng.normal(0.0, noise_std)) if rng is not None and noise_std > 0 else 0.0
    return float(lo + (hi - lo) * np.clip(q + eps, 0.0, 1.0))


def preference(q1: float, q2: float, tie_margin: float = TIE_MARGIN) -> int:
    """+1 if the first is better by at least ``tie_margin``, −1 if the second is, 0 (tie) otherwise."""
    d = q1 - q2
    if abs(d) < tie_margin:
        return 0
    return 1 if d > 0 else -1


def standard_answer(q1: float, q2: float, tie_margin: float = TIE_MARGIN) -> str:
    """VisionReward/MonetBench ``standard_answer``: ``"1"`` first better, ``"2"`` second, ``"0"`` tie."""
    return {1: "1", -1: "2", 0: "0"}[preference(q1, q2, tie_margin)]


def genaibench_vote(q1: float, q2: float, tie_margin: float = TIE_MARGIN, bothbad_q: float = BOTHBAD_Q) -> str:
    """GenAI-Bench ``vote_type``: leftvote / rightvote / tievote, or bothbad_vote for a tie of two bad videos."""
    p = preference(q1, q2, tie_margin)
    if p == 1:
        return "leftvote"
    if p == -1:
        return "rightvote"
    return "bothbad_vote" if q1 < bothbad_q and q2 < bothbad_q else "tievote"


def vqa_answers(deg: Degradations) -> list[tuple[str, int, int]]:
    """(question, answer, mask) for every question of :data:`VQA_QUESTIONS`.

    answer 1 = yes (no covered degradation has severity above :data:`VQA_THRESHOLD`), 0 = no.
    mask 0 (not applicable) when the largest covered continuous severity lies in :data:`VQA_AMBIGUOUS`
    (the realised mismatch fraction is never ambiguous).
    """
    out = []
    lo, hi = VQA_AMBIGUOUS
    for family, question, covered in VQA_QUESTIONS:
        s = max(deg.get(d) for d in covered)
        answer = 0 if s > VQA_THRESHOLD else 1
        mask = 0 if family != "alignment" and lo < s <= hi else 1
        out.append((question, answer, mask))
    return out


def checklist_annotation(deg: Degradations) -> dict[str, int]:
    """VisionReward-style checklist: per dimension 1 (good), 0 (medium) or −1 (bad), from the covered severities."""
    weights = {**SPATIAL_WEIGHTS, **TEMPORAL_WEIGHTS, "mismatch": 1.0}
    out = {}
    for dim, covered in ANNOTATION_DIMENSIONS.items():
        q = 1.0 - min(1.0, sum(weights[d] * deg.get(d) for d in covered))
        out[dim] = 1 if q >= 2 / 3 else (-1 if q < 1 / 3 else 0)
    return out
