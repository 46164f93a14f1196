"""wsis: weakly-supervised instance segmentation from image-level tags (IRNet pipeline)."""

__version__ = "0.1.0"
