"""G-HANet survival workflow: tiling, feature extraction, genomics, splits, training, report."""

__version__ = "0.1.0"
