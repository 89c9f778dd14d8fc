"""dedup: near-duplicate removal for image-text datasets, with a memorization attack to measure it."""

__version__ = "0.1.0"
