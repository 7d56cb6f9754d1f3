"""Captioned shapes: procedural RGB images of one shape with a caption a program can check, no files.

The text-conditional data of GLIDE (Nichol et al. 2021) at toy scale. Each image is one filled shape of
``refdiff.data.shapes`` (its geometry and anti-aliasing, ``shape_coverage``) in a pure colour on black,
and its caption comes from a fixed grammar of four attributes:

    "<size> <colour> <shape> <position>"       e.g. "small red circle top left"

    size      small | large     the shape's area as a fraction of the frame's, f = area / R^2:
                                small f ~ U(0.035, 0.06), large f ~ U(0.10, 0.14); the size
                                s = R sqrt(f / AREA[shape]) in pixels (the table of shapes.py)
    colour    red green blue yellow magenta cyan        pure: each channel 0 or 1, one or two of them 1
    shape     circle square triangle diamond cross ring
    position  top left | top right | bottom left | bottom right
                                the quadrant of the shape's centre; the centre keeps MIDLINE pixels
                                from the frame's midlines and s + RIM pixels from its edges

Word order varies and words are left out, so that a model must read words, not slots: each of the
four phrases is kept with probability p_keep, independently, and the kept phrases are put in a random
order (a position is one phrase: "top left" never splits). An omitted attribute is free: the image
still has one, drawn like the others. Every draw is balanced: each attribute value, and each allowed
(colour, shape) pair, appears n // K or n // K + 1 times.

Held-out compositions: the (colour, shape) pairs of ``held_out`` (default HELD_OUT, 4 of the 36 pairs,
each colour and each shape at most once) never appear in the "train" split; the "held_out" split draws
only them, and its captions always name the colour and the shape.

Read-back: read_colour, read_position and read_size recover the attributes from the pixels alone (all
but the shape, which needs a classifier), and parse_captions reads them from a caption; together they
let a program check a sample against its prompt. The tokenizer maps captions to word indices for a text
encoder: VOCAB, CONTEXT, tokenize, detokenize. The page beside this module: docs/captions.md.
"""

from numbers import Integral, Real

import numpy as np

from refdiff.data.digits import _check_dtype
from refdiff.data.shapes import AREA, SHAPES, shape_coverage

SIZES = ("small", "large")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # index = 2 * (row half) + (column half)
ATTRIBUTES = ("size", "colour", "shape", "position")  # the grammar's phrase order
PALETTE = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.float64)
# Area fractions f = area / R^2 of each size: disjoint, with SIZE_THRESHOLD between them for read_size.
SIZE_AREA = {"small": (0.035, 0.06), "large": (0.10, 0.14)}
SIZE_THRESHOLD = 0.08
HELD_OUT = (("red", "square"), ("green", "ring"), ("blue", "triangle"), ("yellow", "cross"))
RIM = 1.5  # pixels between the frame's edge and the shape's reach s: its anti-aliased rim stays off the border
MIDLINE = 0.5  # pixels between a centre and the midlines, so its quadrant reads back without doubt
MIN_RESOLUTION = 16
FLOOR = 0.1  # read-back: fainter pixels are background, so that a sample's faint noise adds no area

PAD = "<pad>"
VOCAB = (PAD, *SIZES, *COLOURS, *SHAPES, "top", "bottom", "left", "right")  # PAD is index 0
CONTEXT = 6  # the longest caption (5 words) + 1: the last position is always padding (see tokenize)
_CHUNK = 2048  # images rendered at once: bounds the (chunk, H, W) float64 temporaries


def _check_held_out(held_out):
    """The held-out (colour, shape) pairs as a set of index pairs; names must be known and distinct."""
    try:
        pairs = [(COLOURS.index(c), SHAPES.index(s)) for c, s in held_out]
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or len(set(pairs)) != len(pairs):
        raise ValueError(f"held_out must be distinct (colour, shape) pairs of names from {COLOURS} and {SHAPES}, "
                         f"got {held_out!r}")
    return set(pairs)


def _split_pairs(held_out, split):
    """The (colour, shape) index pairs a split draws from, as a (P, 2) int64 array in row-major order."""
    held = _check_held_out(held_out)
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    everything = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    pairs = [pair for pair in everything if (pair in held) == (split == "held_out")]
    if not pairs:
        raise ValueError(f"held_out leaves no (colour, shape) pair for split={split!r}: got {held_out!r}")
    return np.array(pairs, dtype=np.int64)


def _check_args(n, resolution, p_keep, shuffle, seed):
    """Raise ValueError naming the argument unless n, resolution, p_keep, shuffle and seed are valid."""
    for name, value, low in (("n", n, 1), ("resolution", resolution, MIN_RESOLUTION), ("seed", seed, 0)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(p_keep, Real) or isinstance(p_keep, bool) or not 0 <= p_keep <= 1:
        raise ValueError(f"p_keep must be a probability in [0, 1], got {p_keep!r}")
    if not isinstance(shuffle, bool):
        raise ValueError(f"shuffle must be True or False, got {shuffle!r}")


def _balanced(rng, n, k):
    """(n,) int64 values in [0, k), each n // k or n // k + 1 times, in random order."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _draw_geometry(rng, attributes, resolution):
    """Size s and centre (cx, cy) in pixels, (n,) each, that realise the attributes (module docstring).

    Math: f ~ U(SIZE_AREA[size]); s = R sqrt(f / AREA[shape]); the distance of the centre from the
    nearer frame edge along each axis ~ U(s + RIM, R / 2 - MIDLINE), mirrored for right and bottom.
    """
    low, high = np.array([SIZE_AREA[name] for name in SIZES]).T  # (2,) each
    f = rng.uniform(low[attributes["size"]], high[attributes["size"]])  # area fraction
    s = resolution * np.sqrt(f / np.array([AREA[name] for name in SHAPES])[attributes["shape"]])
    room = resolution / 2 - MIDLINE - RIM - s  # > 0 for resolution >= 16 (largest s: 0.33 R, a triangle)
    near = RIM + s + rng.uniform(size=(2, s.size)) * room  # (2, n): from the left and from the top
    right, bottom = attributes["position"] % 2 == 1, attributes["position"] // 2 == 1
    cx = np.where(right, resolution - near[0], near[0])
    cy = np.where(bottom, resolution - near[1], near[1])  # rows grow downward: top is row 0
    return s, cx, cy


def _render(attributes, s, cx, cy, resolution, dtype):
    """Images x = 2 * colour * a - 1, a the shape's coverage. Returns (n, 3, R, R) of dtype."""
    n = s.size
    x = np.empty((n, 3, resolution, resolution), dtype=np.dtype(dtype))
    for start in range(0, n, _CHUNK):  # a loop over chunks of images, each chunk vectorised
        idx = np.arange(start, min(start + _CHUNK, n))
        a = np.empty((idx.size, resolution, resolution))  # (chunk, H, W) coverage
        for k, name in enumerate(SHAPES):
            mine = idx[attributes["shape"][idx] == k]
            a[mine - start] = shape_coverage(name, cx[mine], cy[mine], s[mine], resolution)
        x[idx] = 2 * PALETTE[attributes["colour"][idx], :, None, None] * a[:, None] - 1  # (chunk, 3, H, W)
    return x


def _write_captions(rng, attributes, p_keep, shuffle, always):
    """Captions from the attributes: each phrase kept with probability p_keep (always, where `always`
    is True: (4,) bool), the kept phrases in a random order if shuffle. Returns (n,) str array."""
    n = attributes["size"].size
    keep = (rng.uniform(size=(n, len(ATTRIBUTES))) < p_keep) | always  # (n, 4)
    order = np.tile(np.arange(len(ATTRIBUTES)), (n, 1))  # (n, 4) phrase indices
    if shuffle:
        order = rng.permuted(order, axis=1)
    names = (SIZES, COLOURS, SHAPES, POSITIONS)
    phrases = [[names[j][attributes[key][i]] for j, key in enumerate(ATTRIBUTES)] for i in range(n)]
    return np.array([" ".join(phrases[i][j] for j in order[i] if keep[i, j]) for i in range(n)], dtype=str)


def load_captions(n, resolution=16, split="train", held_out=HELD_OUT, p_keep=0.8, shuffle=True, seed=0,
                  dtype=np.float32):
    """Generate n captioned images of shapes on black, with the ground truth of every attribute.

    Math: x = 2 * colour * a - 1, a the coverage of the shape (shape_coverage); background -1.
    Per image, from np.random.default_rng(seed): the (colour, shape) pair, balanced over the pairs of
    the split; the size and the position, each balanced; the area fraction, the size s and the centre
    (module docstring); then the caption (p_keep, shuffle). The images do not depend on p_keep or
    shuffle: the caption draws come last.

    n: number of images >= 1; resolution: H = W >= 16; split: "train" (pairs not in held_out) or
    "held_out" (only pairs in held_out; captions always name colour and shape); held_out: (colour,
    shape) name pairs; p_keep: probability in [0, 1] that a caption names each attribute; shuffle:
    random phrase order, or the grammar's; seed: int >= 0; dtype: np.float32 or np.float64.
    Returns x: (n, 3, R, R) in [-1, 1]; captions: (n,) str array; attributes: dict of (n,) int64
    arrays "size", "colour", "shape", "position", indices into SIZES, COLOURS, SHAPES, POSITIONS.
    """
    _check_dtype(dtype)
    _check_args(n, resolution, p_keep, shuffle, seed)
    pairs = _split_pairs(held_out, split)  # (P, 2)
    rng = np.random.default_rng(seed)
    colour, shape = pairs[_balanced(rng, n, len(pairs))].T
    attributes = {"size": _balanced(rng, n, len(SIZES)), "colour": colour, "shape": shape,
                  "position": _balanced(rng, n, len(POSITIONS))}
    s, cx, cy = _draw_geometry(rng, attributes, resolution)
    x = _render(attributes, s, cx, cy, resolution, dtype)
    always = np.array([False, split == "held_out", split == "held_out", False])  # the composition under test
    return x, _write_captions(rng, attributes, p_keep, shuffle, always), attributes


def _coverage(x):
    """Pixel values v = (x + 1) / 2 in [0, 1] and the coverage a = max over channels of v, zero below
    FLOOR (a pure colour carries the coverage in its brightest channel). Returns (N, 3, H, W), (N, H, W)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (N, 3, H, W) RGB images in [-1, 1], got shape {x.shape}")
    v = np.clip((x.astype(np.float64) + 1) / 2, 0.0, 1.0)
    a = v.max(axis=1)
    return v, np.where(a < FLOOR, 0.0, a)


def read_colour(x):
    """The colour of each image: the palette colour nearest to the mean chroma v / a of its shape.

    Math: c = sum_p v_p / sum_p a_p over pixels p with a_p > 1/2; colour = argmin_k ||c - PALETTE_k||.

    x: (N, 3, H, W) in [-1, 1]. Returns (N,) int64 indices into COLOURS, -1 for an image without a
    pixel of coverage above 1/2.
    """
    v, a = _coverage(x)
    inside = a > 0.5  # (N, H, W): the rim's mixed pixels are left out
    mass = (a * inside).sum(axis=(1, 2))
    chroma = (v * inside[:, None]).sum(axis=(2, 3)) / np.maximum(mass, 1e-12)[:, None]  # (N, 3)
    colour = np.linalg.norm(chroma[:, None] - PALETTE[None], axis=2).argmin(axis=1)  # (N, 6) -> (N,)
    return np.where(mass > 0, colour, -1).astype(np.int64)


def read_position(x):
    """The quadrant of each image's centroid of coverage, as an index into POSITIONS.

    Math: (col, row) = sum_p a_p (j_p + 1/2, i_p + 1/2) / sum_p a_p; position = 2 [row >= H/2] + [col >= W/2].

    x: (N, 3, H, W) in [-1, 1]. Returns (N,) int64, -1 for an image with no coverage above FLOOR.
    """
    _, a = _coverage(x)
    n, h, w = a.shape
    mass = a.sum(axis=(1, 2))
    safe = np.maximum(mass, 1e-12)
    col = (a.sum(axis=1) * (np.arange(w) + 0.5)).sum(axis=1) / safe  # (N, W) column masses -> (N,)
    row = (a.sum(axis=2) * (np.arange(h) + 0.5)).sum(axis=1) / safe  # (N, H) row masses -> (N,)
    position = 2 * (row >= h / 2) + (col >= w / 2)
    return np.where(mass > 0, position, -1).astype(np.int64)


def read_size(x):
    """The size of each image's shape: "large" (1) if its area fraction sum_p a_p / (H W) exceeds
    SIZE_THRESHOLD, between the two ranges of SIZE_AREA, else "small" (0).

    x: (N, 3, H, W) in [-1, 1]. Returns (N,) int64 indices into SIZES, -1 for an image with no
    coverage above FLOOR.
    """
    _, a = _coverage(x)
    fraction = a.sum(axis=(1, 2)) / (a.shape[1] * a.shape[2])
    return np.where(fraction > 0, (fraction > SIZE_THRESHOLD).astype(np.int64), -1).astype(np.int64)


def _as_captions(captions):
    """The captions as a list of str: one str is one caption; anything else must hold only str."""
    listed = [captions] if isinstance(captions, str) else list(np.asarray(captions, dtype=object).reshape(-1))
    bad = [c for c in listed if not isinstance(c, str)]
    if bad:
        raise TypeError(f"captions must be a str or a sequence of str, got an element {bad[0]!r}")
    return listed


def _words(caption, i):
    """The words of caption i, each checked against VOCAB (PAD is not a word)."""
    words = caption.split()
    for word in words:
        if word not in VOCAB[1:]:
            raise ValueError(f"unknown word {word!r} in caption {i} ({caption!r}); the vocabulary is {VOCAB[1:]}")
    return words


def tokenize(captions, context=CONTEXT):
    """Word indices of captions, padded with PAD (index 0) to the context length.

    No end token: context >= the longest caption + 1 leaves the last position padding in every
    caption, the slot that GLIDE's encoder reads as the caption's summary (its output at position -1),
    and the empty caption "" (classifier-free guidance's unconditional input) is all padding.

    captions: a str or a sequence of N str of VOCAB words separated by spaces; context: L >= 1.
    Returns tokens: (N, L) int64 indices into VOCAB; mask: (N, L) bool, True at words, False at padding.
    """
    listed = _as_captions(captions)
    if not isinstance(context, Integral) or isinstance(context, bool) or context < 1:
        raise ValueError(f"context must be an integer >= 1, got {context!r}")
    tokens = np.zeros((len(listed), context), dtype=np.int64)
    for i, caption in enumerate(listed):
        words = _words(caption, i)
        if len(words) > context:
            raise ValueError(f"caption {i} ({caption!r}) has {len(words)} words, more than context={context}")
        tokens[i, :len(words)] = [VOCAB.index(word) for word in words]
    return tokens, tokens != 0


def detokenize(tokens):
    """Captions from word indices: the words of each row joined by spaces, PAD left out.

    tokens: (N, L) integers in [0, len(VOCAB)). Returns (N,) str array.
    """
    tokens = np.asarray(tokens)
    integers = tokens.ndim == 2 and np.issubdtype(tokens.dtype, np.integer)
    if not integers or tokens.size and not (tokens.min() >= 0 and tokens.max() < len(VOCAB)):
        raise ValueError(f"tokens must be (N, L) integers in [0, {len(VOCAB)}), got {tokens.dtype} of shape "
                         f"{tokens.shape}")
    return np.array([" ".join(VOCAB[t] for t in row if t != 0) for row in tokens.tolist()], dtype=str)


def _parse_one(caption, i):
    """[size, colour, shape, position] indices named by caption i, -1 for an attribute it leaves out."""
    words, found, j = _words(caption, i), [-1] * len(ATTRIBUTES), 0
    while j < len(words):
        phrase = " ".join(words[j:j + 2]) if words[j] in ("top", "bottom") else words[j]
        k = next((k for k, names in enumerate((SIZES, COLOURS, SHAPES, POSITIONS)) if phrase in names), None)
        if k is None or found[k] >= 0:
            problem = f"{phrase!r} is not a phrase" if k is None else f"{ATTRIBUTES[k]} is named twice"
            raise ValueError(f"caption {i} ({caption!r}) does not follow the grammar: {problem}")
        found[k] = (SIZES, COLOURS, SHAPES, POSITIONS)[k].index(phrase)
        j += len(phrase.split())
    return found


def parse_captions(captions):
    """The attributes each caption names: the inverse of load_captions' caption writer.

    Grammar: each caption is some of the phrases <size>, <colour>, <shape>, <position>, in any order,
    each at most once, where a position is two words ("top left").

    captions: a str or a sequence of N str. Returns a dict of (N,) int64 arrays "size", "colour",
    "shape", "position", indices into SIZES, COLOURS, SHAPES, POSITIONS, or -1 where not named.
    """
    found = np.array([_parse_one(c, i) for i, c in enumerate(_as_captions(captions))], dtype=np.int64)
    found = found.reshape(-1, len(ATTRIBUTES))  # (N, 4), also for N = 0
    return {key: found[:, k] for k, key in enumerate(ATTRIBUTES)}
