"""Registry of every dataset the paper uses: where it is published, its native format, label range, tasks.

Facts from the datasets' public releases (docs/DATASETS.md documents the native layouts and their sources).
Download locations and checksums are run configuration and live in config/config.yaml, not here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset."""

    key: str
    name: str
    published_at: str
    paper_role: str
    native_files: tuple[str, ...]  # glob patterns; "a|b": any one of the releases' variants; "dir/": non-empty dir
    tasks: tuple[str, ...]
    splits: tuple[str, ...]
    raw_range: tuple[float, float] | None  # native MOS range; None for preference-only data
    license: str
    notes: str = ""

    def __post_init__(self) -> None:
        if self.raw_range is not None and not self.raw_range[0] < self.raw_range[1]:
            raise ValueError(f"{self.key}: raw_range must be increasing, got {self.raw_range}")


REGISTRY: dict[str, DatasetInfo] = {
    d.key: d
    for d in (
        DatasetInfo(
            "koniq",
            "KonIQ-10k",
            "images: database.mmsp-kn.de/koniq-10k; metas: HF zhiyuanyou/Data-DeQA-Score",
            "stage 1 image-score warm-up",
            (
                "metas/train_koniq_7k.json|train_koniq.json|training_labels.txt",
                "metas/test_koniq_2k.json|test_koniq.json|test_labels.txt",
                "images/",
            ),
            ("image_score",),
            ("train", "test"),
            (1.0, 5.0),
            "KonIQ-10k: research use; DeQA metas: see HF card",
        ),
        DatasetInfo(
            "lsvq",
            "LSVQ",
            "HF teowu/LSVQ-videos (ia-batch*.tar.gz shards + label CSVs)",
            "stage 2 natural-video score; Table 3 (LSVQ-test, LSVQ-1080p)",
            (
                "LSVQ_whole_train.csv|train_labels.txt",
                "labels_test.txt|LSVQ_whole_test.csv",
                "labels_1080p.txt|LSVQ_whole_test_1080p.csv",
                "videos/",
            ),
            ("video_score",),
            ("train", "test", "test_1080p"),
            (0.0, 100.0),
            "research use (Ying et al. 2021)",
        ),
        DatasetInfo(
            "konvid",
            "KoNViD-1k",
            "database.mmsp-kn.de/konvid-1k-database.html",
            "Table 3",
            ("KoNViD_1k_attributes.csv|labels.txt|konvid.json", "KoNViD_1k_videos/"),
            ("video_score",),
            ("test",),
            (1.0, 5.0),
            "research use; videos are Flickr CC content",
        ),
        DatasetInfo(
            "livevqc",
            "LIVE-VQC",
            "live.ece.utexas.edu/research/LIVEVQC",
            "Table 3",
            ("data.mat|labels.txt|LIVE_VQC_metadata.csv", "Video/"),
            ("video_score",),
            ("test",),
            (0.0, 100.0),
            "LIVE research license (request form)",
        ),
        DatasetInfo(
            "lgvq",
            "LGVQ",
            "github.com/zczhang-sjtu/UGVQ (paper arXiv 2407.21408)",
            "stage 2 multi-dimension score; Table 2",
            ("LGVQ.csv|LGVQ_MOS.csv", "videos/"),
            ("multidim_score",),
            ("train", "test"),
            (0.0, 100.0),
            "see UGVQ repository",
            notes="labels: third-party copies of the MOS table (0-100); split by prompt unless a split column exists",
        ),
        DatasetInfo(
            "visionreward",
            "VisionRewardDB-Video",
            "HF zai-org/VisionRewardDB-Video (train/, regression/)",
            "stage 2 comparison + yes/no VQA",
            (
                "train/train-*.parquet",
                "meta_qa_en.txt|VisionReward_video_qa.txt",
                "regression/train-*.parquet",
                "videos/",
            ),
            ("comparison", "vqa"),
            ("train",),
            None,
            "Apache-2.0 (annotations); videos fetched by URL",
            notes="standard_answer video1/video2/tie (public evaluators); 1/2/0 and other aliases accepted",
        ),
        DatasetInfo(
            "genaibench",
            "GenAI-Bench (video)",
            "HF TIGER-Lab/GenAI-Bench, config video_generation, split test_v1",
            "Table 1 (tau / diff)",
            ("video_generation/test_v1-*.parquet", "videos/"),
            ("comparison",),
            ("test",),
            None,
            "see HF card",
            notes="votes leftvote/rightvote/tievote/bothbad_vote; videos fetched by URL",
        ),
        DatasetInfo(
            "monetbench",
            "MonetBench",
            "HF zai-org/VisionRewardDB-Video, folder monetbench/",
            "Table 1 (tau / diff)",
            ("monetbench/test-*.parquet", "videos/"),
            ("comparison",),
            ("test",),
            None,
            "Apache-2.0",
            notes="standard_answer video1/video2/tie (public evaluators); 1/2/0 and other aliases accepted",
        ),
        DatasetInfo(
            "vidprom",
            "VidProM",
            "HF WenhaoWang/VidProM (VidProM_unique.csv)",
            "stage 3 prompt pool",
            ("VidProM_unique.csv",),
            ("prompt",),
            ("train",),
            None,
            "CC-BY-NC-4.0",
        ),
    )
}

DATASET_KEYS: tuple[str, ...] = tuple(REGISTRY)


def get(key: str) -> DatasetInfo:
    """Look up a dataset, with an error that lists the valid keys."""
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown dataset {key!r}; known: {', '.join(DATASET_KEYS)}") from None
