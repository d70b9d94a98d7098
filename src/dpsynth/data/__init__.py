"""Data sources (images and texts) and the datasets that ship offline."""

from dpsynth.data import text as _text  # noqa: F401 - registers data.source "text"
from dpsynth.data.datasets import (
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    LabelledImages,
    load_digits_images,
    load_fashion_mnist,
)
from dpsynth.data.idx import read_idx

__all__ = ["FASHION_MNIST_CLASSES", "DatasetNotFoundError", "LabelledImages",
           "load_digits_images", "load_fashion_mnist", "read_idx"]
