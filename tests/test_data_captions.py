"""Specification of refdiff.data.captions: captioned shapes, their read-back and the tokenizer.

Oracles: the grammar (every caption parses back to the image's ground truth), the documented geometry
(the border stays black, the centroid lies in the stated quadrant, the area in the stated range), exact
balance of the documented draws, and the tokenizer's round trip.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.data import (
    COLOURS,
    CONTEXT,
    HELD_OUT,
    POSITIONS,
    SHAPES,
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
from refdiff.data.captions import ATTRIBUTES, FLOOR, MIDLINE, SIZE_AREA

seeds = st.integers(0, 2**16)
resolutions = st.integers(16, 33)
splits = st.sampled_from(["train", "held_out"])
PAIRS = list(itertools.product(COLOURS, SHAPES))
held_out_sets = st.lists(st.sampled_from(PAIRS), min_size=1, max_size=len(PAIRS) - 1, unique=True)
NAMES = {"size": SIZES, "colour": COLOURS, "shape": SHAPES, "position": POSITIONS}


@given(seed=seeds, resolution=resolutions, split=splits, n=st.integers(1, 30),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_captions_dtype_shape_and_range(seed, resolution, split, n, dtype):
    """x: (n, 3, R, R) of dtype in [-1, 1]; captions: (n,) str; attributes: (n,) int64 indices in range."""
    x, captions, attributes = load_captions(n, resolution, split, seed=seed, dtype=dtype)
    assert isinstance(x, np.ndarray) and x.shape == (n, 3, resolution, resolution) and x.dtype == dtype
    assert x.min() >= -1 and x.max() <= 1
    assert captions.shape == (n,) and captions.dtype.kind == "U"
    assert set(attributes) == set(ATTRIBUTES)
    for key, names in NAMES.items():
        assert attributes[key].shape == (n,) and attributes[key].dtype == np.int64
        assert attributes[key].min() >= 0 and attributes[key].max() < len(names)


@given(seed=seeds, split=splits)
def test_same_seed_same_data_and_float32_is_cast_float64(seed, split):
    """load_captions(seed) == load_captions(seed) exactly, float32 == float32(float64 output), and the
    next seed draws other images."""
    x1, c1, a1 = load_captions(12, split=split, seed=seed)
    x2, c2, a2 = load_captions(12, split=split, seed=seed)
    x64, c64, _ = load_captions(12, split=split, seed=seed, dtype=np.float64)
    assert np.array_equal(x1, x2) and np.array_equal(c1, c2) and all(np.array_equal(a1[k], a2[k]) for k in a1)
    assert np.array_equal(x1, x64.astype(np.float32)) and np.array_equal(c1, c64)
    assert not np.array_equal(x1, load_captions(12, split=split, seed=seed + 1)[0])


@given(seed=seeds, p_keep=st.floats(0, 1), shuffle=st.booleans())
def test_images_do_not_depend_on_p_keep_or_shuffle(seed, p_keep, shuffle):
    """The images and attributes of a seed are the same for any p_keep and shuffle (caption draws come last)."""
    x, _, attributes = load_captions(10, seed=seed)
    y, _, other = load_captions(10, p_keep=p_keep, shuffle=shuffle, seed=seed)
    assert np.array_equal(x, y) and all(np.array_equal(attributes[k], other[k]) for k in attributes)


@given(seed=seeds, split=splits, p_keep=st.floats(0, 1), shuffle=st.booleans())
def test_every_caption_parses_to_the_ground_truth(seed, split, p_keep, shuffle):
    """parse_captions(captions)[key] is attributes[key] where the caption names the attribute, else -1;
    p_keep = 1 names all four; held_out captions always name the colour and the shape."""
    _, captions, attributes = load_captions(40, split=split, p_keep=p_keep, shuffle=shuffle, seed=seed)
    named = parse_captions(captions)
    for key in ATTRIBUTES:
        assert np.all((named[key] == attributes[key]) | (named[key] == -1)), key
    if p_keep == 1:
        assert all(np.array_equal(named[k], attributes[k]) for k in ATTRIBUTES)
    if split == "held_out":
        assert np.all(named["colour"] >= 0) and np.all(named["shape"] >= 0)


def test_phrases_kept_with_probability_p_keep_in_random_order():
    """Over 2000 captions at p_keep = 0.5 each attribute is named 1000 +- 110 times (5 binomial sd);
    p_keep = 0 gives "" in the train split; shuffle=False keeps the grammar's order, shuffle=True
    puts every phrase first in some captions, and "top"/"bottom" is always followed by "left"/"right"."""
    _, captions, _ = load_captions(2000, p_keep=0.5, seed=1)
    named = parse_captions(captions)
    assert all(abs((named[k] >= 0).sum() - 1000) < 110 for k in ATTRIBUTES)
    assert set(load_captions(50, p_keep=0.0, seed=2)[1]) == {""}
    _, fixed, attributes = load_captions(30, p_keep=1.0, shuffle=False, seed=3)
    assert list(fixed) == [" ".join(NAMES[k][attributes[k][i]] for k in ATTRIBUTES) for i in range(30)]
    _, shuffled, _ = load_captions(400, p_keep=1.0, seed=4)
    first_words = {c.split()[0] for c in shuffled}
    for key in ATTRIBUTES:
        assert first_words & {name.split()[0] for name in NAMES[key]}, key
    words = [w for c in shuffled for w in c.split()]
    assert all(words[j + 1] in ("left", "right") for j, w in enumerate(words) if w in ("top", "bottom"))


@given(held_out=held_out_sets, seed=seeds)
def test_held_out_pairs_never_in_train_and_only_and_all_in_held_out(held_out, seed):
    """Every train image's (colour, shape) is outside held_out; every held_out image's is inside, and with
    n >= len(held_out) each held-out pair appears (the draw is balanced over pairs)."""
    held = {(COLOURS.index(c), SHAPES.index(s)) for c, s in held_out}
    _, _, train = load_captions(72, split="train", held_out=held_out, seed=seed)
    _, _, test = load_captions(2 * len(held), split="held_out", held_out=held_out, seed=seed)
    assert not held & set(zip(train["colour"].tolist(), train["shape"].tolist()))
    assert set(zip(test["colour"].tolist(), test["shape"].tolist())) == held


def test_default_held_out_is_four_pairs_of_distinct_colours_and_shapes():
    """HELD_OUT: 4 of the 36 pairs, no colour or shape twice (each is still seen in training with 5 others)."""
    colours, shapes = zip(*HELD_OUT)
    assert len(HELD_OUT) == 4 and len(set(colours)) == 4 and len(set(shapes)) == 4
    assert set(colours) <= set(COLOURS) and set(shapes) <= set(SHAPES)


@given(n=st.integers(1, 150), split=splits, seed=seeds)
def test_draws_are_balanced(n, split, seed):
    """Counts of each size, each position and each (colour, shape) pair of the split differ by at most one."""
    _, _, attributes = load_captions(n, split=split, seed=seed)
    pair = attributes["colour"] * len(SHAPES) + attributes["shape"]
    n_pairs = len(HELD_OUT) if split == "held_out" else len(PAIRS) - len(HELD_OUT)
    pair_index = np.unique(pair, return_inverse=True)[1]  # pairs absent from a small n count 0 below
    for values, k in ((attributes["size"], 2), (attributes["position"], 4), (pair_index, n_pairs)):
        counts = np.bincount(values, minlength=k)
        assert counts.max() - counts.min() <= 1 and len(counts) == k


@given(seed=seeds, resolution=resolutions, split=splits)
def test_shapes_inside_the_frame_in_their_quadrant_and_size_range(seed, resolution, split):
    """The outermost rows and columns are black (-1: nothing is cut off); the centroid of coverage a lies
    in the stated quadrant, at least MIDLINE / 2 from the midlines; sum(a) / R^2 lies in the stated size's
    area range, to 2 pixels (the anti-aliased rim's error)."""
    x, _, attributes = load_captions(60, resolution, split, seed=seed, dtype=np.float64)
    assert np.all(x[:, :, [0, -1], :] == -1) and np.all(x[:, :, :, [0, -1]] == -1)
    a = ((x + 1) / 2).max(axis=1)  # (N, R, R): coverage, carried by the brightest channel of a pure colour
    mass = a.sum(axis=(1, 2))
    centres = np.arange(resolution) + 0.5
    col = (a.sum(axis=1) * centres).sum(axis=1) / mass
    row = (a.sum(axis=2) * centres).sum(axis=1) / mass
    half = resolution / 2
    right, bottom = attributes["position"] % 2 == 1, attributes["position"] // 2 == 1
    assert np.all(np.where(right, col - half, half - col) > MIDLINE / 2)
    assert np.all(np.where(bottom, row - half, half - row) > MIDLINE / 2)
    low, high = np.array([SIZE_AREA[name] for name in SIZES])[attributes["size"]].T * resolution**2
    assert np.all(mass > low - 2) and np.all(mass < high + 2)


@given(seed=seeds, resolution=resolutions, split=splits, dtype=st.sampled_from([np.float32, np.float64]))
def test_readers_recover_colour_position_and_size(seed, resolution, split, dtype):
    """read_colour(x), read_position(x) and read_size(x) equal the ground truth on every clean image."""
    x, _, attributes = load_captions(100, resolution, split, seed=seed, dtype=dtype)
    assert np.array_equal(read_colour(x), attributes["colour"])
    assert np.array_equal(read_position(x), attributes["position"])
    assert np.array_equal(read_size(x), attributes["size"])


@given(seed=seeds, level=st.floats(0, 0.9 * FLOOR))
def test_readers_ignore_background_fainter_than_the_floor(seed, level):
    """Raising the black background to a grey level below FLOOR (in [0, 1] units) changes no reading."""
    x, _, attributes = load_captions(40, seed=seed, dtype=np.float64)
    noisy = np.where(x == -1, 2 * level - 1, x)
    for read, key in ((read_colour, "colour"), (read_position, "position"), (read_size, "size")):
        assert np.array_equal(read(noisy), attributes[key]), key


def test_readers_give_minus_one_for_blank_images_and_check_shape():
    """A black image has no colour, position or size (-1); x must be (N, 3, H, W)."""
    x = -np.ones((2, 3, 16, 16))
    for read in (read_colour, read_position, read_size):
        assert np.array_equal(read(x), [-1, -1])
        with pytest.raises(ValueError, match="x must be"):
            read(x[:, :1])


def test_vocabulary_and_context():
    """VOCAB holds PAD at index 0 and every word of the grammar once; CONTEXT is the longest caption + 1."""
    words = {w for names in NAMES.values() for name in names for w in name.split()}
    assert VOCAB[0] == "<pad>" and len(set(VOCAB)) == len(VOCAB) and set(VOCAB[1:]) == words
    assert CONTEXT == 1 + sum(max(len(name.split()) for name in names) for names in NAMES.values())


@given(seed=seeds, p_keep=st.floats(0, 1), split=splits)
def test_tokenize_round_trip_and_mask(seed, p_keep, split):
    """detokenize(tokenize(c)) == c; tokens (N, CONTEXT) int64 in [0, |VOCAB|); mask == (tokens != 0), words
    first then padding; the last position is always padding."""
    _, captions, _ = load_captions(30, split=split, p_keep=p_keep, seed=seed)
    tokens, mask = tokenize(captions)
    assert tokens.shape == mask.shape == (30, CONTEXT) and tokens.dtype == np.int64 and mask.dtype == bool
    assert tokens.min() >= 0 and tokens.max() < len(VOCAB)
    assert np.array_equal(mask, tokens != 0) and np.all(mask.sum(axis=1) == [len(c.split()) for c in captions])
    assert np.all(mask[:, :-1] >= mask[:, 1:]) and not mask[:, -1].any()
    assert list(detokenize(tokens)) == list(captions)


def test_empty_caption_is_all_padding_and_one_str_is_one_caption():
    """tokenize("") is one row of PAD with an all-False mask; tokenize(c) == tokenize([c]); context sets L."""
    tokens, mask = tokenize("")
    assert tokens.shape == (1, CONTEXT) and not tokens.any() and not mask.any()
    assert np.array_equal(tokenize("large cyan ring")[0], tokenize(["large cyan ring"])[0])
    assert tokenize(["red"], context=9)[0].shape == (1, 9)


def test_tokenizer_errors_name_the_word_the_length_and_the_argument():
    """An unknown word: ValueError naming it and the vocabulary; too many words: naming the count and the
    context; a bad context, a non-str caption or out-of-range tokens: naming the argument."""
    with pytest.raises(ValueError, match=r"'purple'.*vocabulary.*'small'.*'right'"):
        tokenize(["small red circle", "purple ring"])
    with pytest.raises(ValueError, match="has 5 words, more than context=4"):
        tokenize("small red circle top left", context=4)
    with pytest.raises(ValueError, match="context"):
        tokenize("red", context=0)
    with pytest.raises(TypeError, match="captions"):
        tokenize(["red", 3])
    for bad in (np.array([[0, len(VOCAB)]]), np.array([-1]), np.array([[0.5]])):
        with pytest.raises(ValueError, match="tokens"):
            detokenize(bad)


@pytest.mark.parametrize("caption, problem", [("red red circle", "colour is named twice"),
                                              ("top left small bottom right", "position is named twice"),
                                              ("small top", "'top' is not a phrase"),
                                              ("left circle", "'left' is not a phrase"),
                                              ("top circle left", "'top circle' is not a phrase"),
                                              ("big circle", "unknown word 'big'")])
def test_parse_captions_rejects_what_the_grammar_does_not_make(caption, problem):
    """A repeated attribute, a split position or an unknown word is a ValueError saying which."""
    with pytest.raises(ValueError, match=problem):
        parse_captions(caption)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n": 0}, "n"), ({"n": 2.5}, "n"), ({"resolution": 15}, "resolution"), ({"split": "test"}, "split"),
     ({"held_out": [("red", "hexagon")]}, "held_out"), ({"held_out": [("red", "ring"), ("red", "ring")]}, "held_out"),
     ({"held_out": "red"}, "held_out"), ({"held_out": PAIRS}, "held_out"),
     ({"held_out": (), "split": "held_out"}, "held_out"), ({"p_keep": 1.5}, "p_keep"), ({"p_keep": True}, "p_keep"),
     ({"shuffle": 1}, "shuffle"), ({"seed": -1}, "seed"), ({"dtype": np.int32}, "dtype")],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, word):
    """Each invalid argument raises ValueError whose message names it."""
    with pytest.raises(ValueError, match=word):
        load_captions(**{"n": 4, **kwargs})
