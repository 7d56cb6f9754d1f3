"""Datasets: embedded and generated data, returned as NumPy arrays on the host."""

from refdiff.data.digits import IMAGE_SHAPE, NUM_CLASSES, load_digits

__all__ = ["load_digits", "NUM_CLASSES", "IMAGE_SHAPE"]
