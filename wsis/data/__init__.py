"""Datasets: image ids, image-level labels, and (for evaluation only) ground-truth masks."""

from .base import Dataset, InstanceGT
from .registry import open_dataset, DATASET_KINDS

__all__ = ["Dataset", "InstanceGT", "open_dataset", "DATASET_KINDS"]
