"""Datasets: embedded and generated data, returned as NumPy arrays on the host.

Images are (N, C, H, W) float32 (or float64) in [-1, 1] with (N,) int64 labels or None; 2-D toy data
is (N, 2). Loaders: load_digits (embedded 8x8 digits), load_shapes (procedural shapes),
load_captions (procedural captioned shapes, with the ground truth of every attribute), load_toy2d
(2-D toys), load_npz and load_image_folder (the user's own images); train_test_split holds out a test
part.

Captions (docs/captions.md): the grammar's names SIZES, COLOURS, SHAPES, POSITIONS and the held-out
(colour, shape) pairs HELD_OUT; parse_captions reads the attributes a caption names, read_colour,
read_position and read_size read them from an image; tokenize and detokenize map captions to indices
into VOCAB, padded to CONTEXT.
"""

from refdiff.data.captions import (
    COLOURS,
    CONTEXT,
    HELD_OUT,
    POSITIONS,
    SIZES,
    VOCAB,
    detokenize,
    load_captions,
    parse_captions,
    read_colour,
    read_position,
    read_size,
    tokenize,
)
from refdiff.data.digits import IMAGE_SHAPE, NUM_CLASSES, load_digits
from refdiff.data.files import image_folder_classes, load_image_folder, load_npz, train_test_split
from refdiff.data.shapes import SHAPES, load_shapes
from refdiff.data.toy2d import TOY2D, load_toy2d

__all__ = [
    "load_digits",
    "NUM_CLASSES",
    "IMAGE_SHAPE",
    "load_shapes",
    "SHAPES",
    "load_captions",
    "SIZES",
    "COLOURS",
    "POSITIONS",
    "HELD_OUT",
    "parse_captions",
    "read_colour",
    "read_position",
    "read_size",
    "tokenize",
    "detokenize",
    "VOCAB",
    "CONTEXT",
    "load_toy2d",
    "TOY2D",
    "load_npz",
    "load_image_folder",
    "image_folder_classes",
    "train_test_split",
]
