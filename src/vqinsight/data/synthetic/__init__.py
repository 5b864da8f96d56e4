"""Synthetic stand-ins for every dataset of docs/DATASETS.md, written in each dataset's native format with real media.

Scenes (:mod:`.scenes`) are rendered, degraded with known severities (:mod:`.degrade`), and labelled by a known
function (:mod:`.labels`); :func:`generate_dataset` (:mod:`.generate`) writes one dataset's raw directory.
"""

from vqinsight.data.synthetic.degrade import Mix
from vqinsight.data.synthetic.generate import DATASET_KEYS, DEFAULT_COUNTS, generate_dataset

__all__ = ["DATASET_KEYS", "DEFAULT_COUNTS", "Mix", "generate_dataset"]
