"""Image sources."""

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
