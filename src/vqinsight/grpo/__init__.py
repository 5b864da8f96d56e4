"""GRPO training of the VQ-Insight judge on top of TRL.

* ``trainer.VideoGRPOTrainer``: ``trl.GRPOTrainer`` subclass (pinned to ``trl==1.16.0``) that feeds images and videos
  to generation *and* to the policy / old / reference log-prob forwards, suppresses sampling of vision placeholder
  tokens and adds the temporal modeling reward (Eq. 4) from rollouts on frame-shuffled videos.
* ``reward_funcs``: builds the list of TRL reward functions and weights from a recipe dict, including a length reward
  (Eq. 5) that is gated on per-row correctness.

The package ``__init__`` imports nothing heavy; import the submodules explicitly.
"""
