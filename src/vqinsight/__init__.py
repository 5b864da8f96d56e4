"""VQ-Insight."""
