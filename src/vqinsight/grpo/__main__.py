"""`python -m vqinsight.grpo` / `accelerate launch -m vqinsight.grpo`: see vqinsight.grpo.train."""

import sys

from .train import main

sys.exit(main())
