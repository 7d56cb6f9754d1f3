"""Specification of refdiff.data.files: the user's .npz archives and image folders, and the split.

Oracles: arrays written here with np.savez / Pillow and read back (round trips through every
accepted layout), and one bad file per documented error.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.data import image_folder_classes, load_image_folder, load_npz, train_test_split

seeds = st.integers(0, 2**16)


def pixels(seed, n=5, c=3, h=6, w=7):
    """(n, c, h, w) uint8 pixels with 0 and 255 both present, reproducible from seed."""
    k = np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    k.flat[0], k.flat[-1] = 0, 255
    return k


def as_unit(k):
    """The documented map of uint8 pixels: (2k - 255) / 255, in float64 (float32 loads equal its cast)."""
    return (2 * k.astype(np.float64) - 255) / 255


def save(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------------------------
# .npz round trips


LAYOUTS = {  # name -> (NCHW -> stored layout) for a stored array of C = 1 or 3 channels
    "nchw": lambda k: k,
    "nhwc": lambda k: k.transpose(0, 2, 3, 1),
    "nhw": lambda k: k[:, 0],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("keys", [("x", "y"), ("images", "labels"), ("x_train", "y_train")])
def test_npz_round_trip_of_every_layout_and_name(tmp_path, layout, keys):
    """load_npz(savez(key=layout(k), label_key=y)) == ((2k - 255) / 255 as NCHW float32, int64 y)."""
    k = pixels(0, c=1 if layout == "nhw" else 3)
    y = np.array([3, 0, 1, 1, 2], dtype=np.uint8)
    path = save(tmp_path, **{keys[0]: LAYOUTS[layout](k), keys[1]: y, "x_test": k[:2]})
    x, labels = load_npz(path)
    assert x.dtype == np.float32 and x.shape == k.shape
    assert np.array_equal(x, as_unit(k).astype(np.float32))
    assert labels.dtype == np.int64 and np.array_equal(labels, y)
    assert x.min() == -1 and x.max() == 1


@given(seed=seeds, c=st.sampled_from([1, 3, 4]), h=st.integers(1, 9), w=st.integers(1, 9))
def test_channel_axis_rule_recovers_nchw_from_nhwc(tmp_path_factory, seed, c, h, w):
    """For C in {1, 3, 4}: (N, H, W, C) with H > C is read back as its (N, C, H, W) transpose, and
    (N, C, H, W) is kept as it is unless W is also in {1, 3, 4} and smaller than C (then channels-last)."""
    k = pixels(seed, n=2, c=c, h=h + c, w=w)  # H > C makes the channels-last reading unambiguous
    tmp = tmp_path_factory.mktemp("npz")
    x_last, _ = load_npz(save(tmp, "last.npz", x=k.transpose(0, 2, 3, 1)), np.float64)
    assert np.array_equal(x_last, as_unit(k))
    if not (w in (1, 3, 4) and w < c):  # the channels-first array is read as itself
        x_first, _ = load_npz(save(tmp, "first.npz", x=k), np.float64)
        assert np.array_equal(x_first, as_unit(k))


def test_uint8_levels_map_to_one_rounding_of_the_exact_value(tmp_path):
    """For all 256 levels k: float32 load == float32(float64 load), float64 load == (2k - 255) / 255,
    0 -> -1 and 255 -> +1 exactly, and the levels are strictly increasing."""
    k = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    path = save(tmp_path, x=k)
    x32, x64 = load_npz(path)[0].ravel(), load_npz(path, np.float64)[0].ravel()
    assert np.array_equal(x32, x64.astype(np.float32)) and np.array_equal(x64, as_unit(k).ravel())
    assert x32[0] == -1 and x32[-1] == 1 and np.all(np.diff(x32) > 0)


def test_float_images_in_unit_range_round_trip_without_labels(tmp_path):
    """Float images already in [-1, 1] come back unchanged (cast to dtype); no label array -> y is None."""
    x0 = np.random.default_rng(1).uniform(-1, 1, size=(4, 1, 5, 5))
    x, y = load_npz(save(tmp_path, images=x0), np.float64)
    assert y is None and np.array_equal(x, x0)
    x32, _ = load_npz(save(tmp_path, "f32.npz", images=x0.astype(np.float32)))
    assert x32.dtype == np.float32 and np.array_equal(x32, x0.astype(np.float32))


def test_float_images_all_nonnegative_warn_of_zero_one_range(tmp_path):
    """Float images with no negative value (as [0, 1] data) load, with a UserWarning naming the file."""
    path = save(tmp_path, x=np.full((2, 4, 4), 0.5))
    with pytest.warns(UserWarning, match="data.npz"):
        load_npz(path)


def test_label_column_and_whole_float_labels_are_accepted(tmp_path):
    """Labels of shape (N, 1), or floats with whole values, load as (N,) int64."""
    k = pixels(2, n=3, c=1)
    _, y = load_npz(save(tmp_path, x=k, y=np.array([[2], [0], [1]])))
    assert np.array_equal(y, [2, 0, 1]) and y.dtype == np.int64
    _, y = load_npz(save(tmp_path, "f.npz", x=k, y=np.array([2.0, 0.0, 1.0])), num_classes=3)
    assert np.array_equal(y, [2, 0, 1]) and y.dtype == np.int64


# ---------------------------------------------------------------------------------------------
# .npz errors: each names the file


def bad_npz_cases():
    k = pixels(0, n=3, c=1)
    nan = as_unit(k).astype(np.float32)
    nan[1, 0, 2, 3] = np.nan
    return {
        "rank 2 images": ({"x": k[:, 0, 0]}, "rank"),
        "rank 5 images": ({"x": k[..., None]}, "rank"),
        "no channel axis": ({"x": np.zeros((3, 5, 6, 7), np.uint8)}, "channel axis"),
        "non-finite": ({"x": nan}, "non-finite"),
        "infinite": ({"x": np.full((3, 4, 4), np.inf)}, "non-finite"),
        "float out of range": ({"x": k.astype(np.float32)}, r"\[-1, 1\]"),
        "int out of range": ({"x": k.astype(np.int32) * 2}, "0..255"),
        "bool images": ({"x": k > 100}, "dtype"),
        "empty": ({"x": k[:0]}, "empty"),
        "zero width": ({"x": k[:, :, :, :0]}, "empty"),
        "negative label": ({"x": k, "y": np.array([0, -1, 2])}, "labels must be"),
        "label count": ({"x": k, "y": np.array([0, 1])}, "2 labels for 3 images"),
        "one-hot labels": ({"x": k, "y": np.eye(3)}, "one-hot"),
        "fractional labels": ({"x": k, "y": np.array([0.5, 1, 2])}, "whole numbers"),
        "string labels": ({"x": k, "y": np.array(["a", "b", "c"])}, "integers"),
        "no known name": ({"pictures": k, "targets": np.arange(3)}, "holds 2 arrays: pictures, targets"),
        "two image arrays": ({"x": k, "images": k}, "several image arrays"),
    }


@pytest.mark.parametrize("case", sorted(bad_npz_cases()))
def test_bad_npz_raises_value_error_naming_file_and_fault(tmp_path, case):
    """Every documented fault raises ValueError whose message names the file and the fault."""
    arrays, fault = bad_npz_cases()[case]
    path = save(tmp_path, "user_data.npz", **arrays)
    with pytest.raises(ValueError, match=fault) as err:
        load_npz(path)
    assert "user_data.npz" in str(err.value)


def test_labels_beyond_num_classes_raise(tmp_path):
    """Labels must lie in [0, num_classes) when num_classes is given: a label 10 with 10 classes fails."""
    path = save(tmp_path, "digits.npz", x=pixels(0, n=3, c=1), y=np.array([0, 9, 10]))
    assert load_npz(path)[1].max() == 10  # fine without a class count
    with pytest.raises(ValueError, match=r"digits.npz.*\[0, 10\)"):
        load_npz(path, num_classes=10)


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    """A path that does not exist raises FileNotFoundError whose message names the path."""
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_npz(tmp_path / "nowhere.npz")


@pytest.mark.parametrize("content, fault", [(b"not an archive at all", "not a readable .npz"),
                                            (b"PK\x03\x04broken zip", "not a readable .npz"),
                                            (None, "one .npy array")])
def test_unreadable_or_npy_file_raises_value_error_naming_it(tmp_path, content, fault):
    """Garbage, a broken zip, or a plain .npy array raise ValueError naming the file."""
    path = tmp_path / "weird.npz"
    if content is None:
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 3, 3)))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=fault) as err:
        load_npz(path)
    assert "weird.npz" in str(err.value)


def test_object_arrays_are_refused_without_pickle(tmp_path):
    """An object array in the archive is refused (allow_pickle=False) with the file and array named."""
    path = save(tmp_path, "pickled.npz", x=np.array([np.zeros((2, 2)), "text"], dtype=object))
    with pytest.raises(ValueError, match=r"pickled.npz.*'x'"):
        load_npz(path)


def test_folder_given_to_load_npz_raises_value_error(tmp_path):
    """A folder passed as an .npz file raises ValueError naming it and pointing to load_image_folder."""
    with pytest.raises(ValueError, match="load_image_folder"):
        load_npz(tmp_path)


# ---------------------------------------------------------------------------------------------
# image folders


@pytest.fixture
def Image():
    return pytest.importorskip("PIL.Image")


def write_png(Image, path, k):
    """Write (C, H, W) uint8 pixels k as a PNG (grey for C = 1, RGB for C = 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(k[0] if k.shape[0] == 1 else k.transpose(1, 2, 0)).save(path)


def test_image_folder_labels_come_from_sorted_subfolders(tmp_path, Image):
    """Images in class subfolders load as (2k - 255) / 255 in NCHW, sorted by folder then file name,
    with label = index of the folder in sorted order; hidden entries and non-images are skipped."""
    k = pixels(4, n=5, c=3, h=6, w=7)
    files = {"cat/b.png": 0, "cat/a.png": 1, "ant/z.png": 2, "dog/1.PNG": 3, "dog/0.png": 4}
    for name, i in files.items():
        write_png(Image, tmp_path / name, k[i])
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    x, y = load_image_folder(tmp_path)
    order = [2, 1, 0, 4, 3]  # ant/z, cat/a, cat/b, dog/0, dog/1.PNG
    assert image_folder_classes(tmp_path) == ("ant", "cat", "dog")
    assert x.shape == (5, 3, 6, 7) and x.dtype == np.float32
    assert np.array_equal(x, as_unit(k[order]).astype(np.float32))
    assert np.array_equal(y, [0, 1, 1, 2, 2]) and y.dtype == np.int64


def test_flat_grey_folder_has_no_labels_and_one_channel(tmp_path, Image):
    """A folder of greyscale images with no subfolders gives y None and C = 1 (colors=None)."""
    k = pixels(5, n=3, c=1, h=4, w=4)
    for i in range(3):
        write_png(Image, tmp_path / f"{i}.png", k[i])
    x, y = load_image_folder(tmp_path, dtype=np.float64)
    assert y is None and x.shape == (3, 1, 4, 4) and np.array_equal(x, as_unit(k))
    x3, _ = load_image_folder(tmp_path, colors=3)
    assert x3.shape == (3, 3, 4, 4) and np.array_equal(x3, np.repeat(x3[:, :1], 3, axis=1))


def test_mixed_grey_and_colour_files_load_as_rgb(tmp_path, Image):
    """With one RGB file among grey ones, colors=None reads all as RGB: grey files get R = G = B."""
    write_png(Image, tmp_path / "a.png", pixels(6, n=1, c=1, h=4, w=4)[0])
    write_png(Image, tmp_path / "b.png", pixels(7, n=1, c=3, h=4, w=4)[0])
    x, _ = load_image_folder(tmp_path)
    assert x.shape == (2, 3, 4, 4) and np.array_equal(x[0, 0], x[0, 2])


def test_resize_gives_every_image_the_requested_size(tmp_path, Image):
    """Images of different sizes load at size (H, W) when size is given; an int S means (S, S)."""
    write_png(Image, tmp_path / "small.png", pixels(8, n=1, c=3, h=5, w=9)[0])
    write_png(Image, tmp_path / "large.png", pixels(9, n=1, c=3, h=12, w=8)[0])
    x, _ = load_image_folder(tmp_path, size=(6, 10))
    assert x.shape == (2, 3, 6, 10) and x.min() >= -1 and x.max() <= 1
    assert load_image_folder(tmp_path, size=8)[0].shape == (2, 3, 8, 8)


@pytest.mark.parametrize("c", [1, 3])
def test_npz_resizes_as_a_folder_of_the_same_images_does(tmp_path, Image, monkeypatch, c):
    """load_npz(size=) resizes as load_image_folder(size=) does: a uint8 archive (channels last) loads equal to
    the same images as PNG files, smaller, larger and non-square; the same pixels as floats in [-1, 1] stay in
    [-1, 1] and, made smaller, land within two 8-bit levels of that (the 8-bit path rounds; made larger, it also
    clips between Pillow's two passes); float64 pixels at their own size stay exact. A bad size, or a resize
    that cannot fit in memory, is refused naming the argument or the file."""
    import refdiff.memory

    k = pixels(11, n=3, c=c, h=9, w=12)
    for i in range(3):
        write_png(Image, tmp_path / "png" / f"{i}.png", k[i])
    uint8 = save(tmp_path, "uint8.npz", x=k.transpose(0, 2, 3, 1))
    floats = save(tmp_path, "float.npz", x=as_unit(k))
    for size in (5, 16, (7, 4)):
        x, _ = load_npz(uint8, size=size)
        assert np.array_equal(x, load_image_folder(tmp_path / "png", size=size)[0]), size
        xf, _ = load_npz(floats, size=size)
        assert xf.shape == x.shape and xf.min() >= -1 and xf.max() <= 1
        if x.shape[2] < 9:
            np.testing.assert_allclose(xf, x, atol=2 * 2 / 255)
    assert np.array_equal(load_npz(floats, dtype=np.float64, size=(9, 12))[0], as_unit(k))
    with pytest.raises(ValueError, match="size must be None, an int >= 1"):
        load_npz(uint8, size=0)
    monkeypatch.setattr(refdiff.memory, "available_memory", lambda: 1 << 20)
    with pytest.raises(ValueError, match=r"uint8\.npz: array 'x': resizing 3 images to 1000x1000 .*needs about"):
        load_npz(uint8, size=1000)


def test_mixed_image_sizes_raise_naming_both_files(tmp_path, Image):
    """Without size, images of two sizes raise ValueError naming a file of each size."""
    write_png(Image, tmp_path / "cls" / "small.png", pixels(8, n=1, c=3, h=5, w=9)[0])
    write_png(Image, tmp_path / "cls" / "wide.png", pixels(9, n=1, c=3, h=5, w=10)[0])
    with pytest.raises(ValueError, match=r"small\.png is 9x5.*wide\.png is 10x5.*size="):
        load_image_folder(tmp_path)


def write_png16(Image, path, k):
    """Write (H, W) pixels k in 0..65535 as a 16-bit greyscale PNG (Pillow mode "I;16")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("I;16", (k.shape[1], k.shape[0]), k.astype("<u2").tobytes()).save(path)


def as_unit16(k):
    """The documented map of 16-bit pixels: (2k - 65535) / 65535, in float64."""
    return (2 * k.astype(np.float64) - 65535) / 65535


def test_16bit_grey_pngs_load_at_full_depth_scaled_by_their_own_bit_depth(tmp_path, Image):
    """A 16-bit greyscale PNG holding a gradient of 160 levels from 0 to 63000 loads as (2k - 65535) / 65535
    (0 -> -1, 63000 -> 0.9227, all 160 levels distinct; float32 equals the float64 map's cast); an 8-bit
    file beside it keeps (2k - 255) / 255; colors=3 repeats the full-depth grey; resizing keeps many levels."""
    k16 = np.round(np.linspace(0, 63000, 160)).astype(np.uint16).reshape(10, 16)
    k8 = pixels(3, n=1, c=1, h=10, w=16)[0]
    write_png16(Image, tmp_path / "a.png", k16)
    write_png(Image, tmp_path / "b.png", k8)
    x, _ = load_image_folder(tmp_path, dtype=np.float64)
    assert x.shape == (2, 1, 10, 16) and np.unique(x[0]).size == 160
    assert np.array_equal(x[0, 0], as_unit16(k16)) and x[0, 0, 0, 0] == -1
    assert np.array_equal(x[1], as_unit(k8))
    x32, _ = load_image_folder(tmp_path, dtype=np.float32)
    assert np.array_equal(x32, x.astype(np.float32))
    x3, _ = load_image_folder(tmp_path, colors=3, dtype=np.float64)
    assert x3.shape == (2, 3, 10, 16) and np.array_equal(x3, np.repeat(x[:, :1], 3, axis=1))
    small, _ = load_image_folder(tmp_path, size=(5, 8))
    assert np.unique(small[0]).size > 30 and small.min() >= -1 and small.max() <= 1


def test_16bit_png_extremes_map_to_minus_one_and_one(tmp_path, Image):
    """The 16-bit levels 0 and 65535 load as exactly -1 and +1, and 32768 as 1 / 65535."""
    write_png16(Image, tmp_path / "0.png", np.array([[0, 32768, 65535]], dtype=np.uint16))
    x, _ = load_image_folder(tmp_path, dtype=np.float64)
    assert x[0, 0, 0].tolist() == [-1.0, 1 / 65535, 1.0]


@pytest.mark.parametrize("case", ["empty", "empty class", "images beside classes", "unreadable", "not a folder"])
def test_bad_image_folder_raises_value_error_naming_the_place(tmp_path, Image, case):
    """Each faulty folder raises ValueError naming the folder or file at fault."""
    root = tmp_path / "faulty"
    root.mkdir()
    good = pixels(1, n=1, c=3, h=4, w=4)[0]
    if case == "empty":
        (root / "readme.txt").write_text("no images here")
        target, fault = root, "empty dataset"
    elif case == "empty class":
        write_png(Image, root / "a" / "0.png", good)
        (root / "b").mkdir()
        target, fault = root, r"faulty[/\\]b.*holds no image"
    elif case == "images beside classes":
        write_png(Image, root / "a" / "0.png", good)
        write_png(Image, root / "loose.png", good)
        target, fault = root, "loose.png"
    elif case == "unreadable":
        write_png(Image, root / "0.png", good)
        (root / "1.png").write_bytes(b"not a png")
        target, fault = root, r"1\.png: cannot read"
    else:
        write_png(Image, root / "0.png", good)
        target, fault = root / "0.png", "0.png: is a file"
    with pytest.raises(ValueError, match=fault):
        load_image_folder(target)


def test_missing_folder_raises_file_not_found(tmp_path):
    """A folder that does not exist raises FileNotFoundError naming it (checked before Pillow is needed)."""
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_image_folder(tmp_path / "no_such_folder")


def test_missing_pillow_raises_import_error_with_install_hint(tmp_path, monkeypatch):
    """Without Pillow, load_image_folder raises ImportError that says `pip install pillow`."""
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import ...` raise ImportError
    (tmp_path / "0.png").write_bytes(b"never decoded")
    with pytest.raises(ImportError, match="pip install pillow"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------------------------------------
# train_test_split


@given(n=st.integers(2, 300), fraction=st.floats(0.01, 0.99), seed=seeds)
def test_split_is_a_partition_with_rows_and_labels_kept_together(n, fraction, seed):
    """train and test rows are disjoint, together all rows, each in original order; y follows x;
    len(test) == round(fraction * n) within [1, n - 1]."""
    x = np.arange(n * 2).reshape(n, 2)
    y = np.arange(n) * 10
    x_train, x_test, y_train, y_test = train_test_split(x, y, fraction, seed)
    rows = np.concatenate([x_train[:, 0], x_test[:, 0]]) // 2
    assert np.array_equal(np.sort(rows), np.arange(n))
    assert np.all(np.diff(x_train[:, 0]) > 0) and np.all(np.diff(x_test[:, 0]) > 0)
    assert np.array_equal(y_train, x_train[:, 0] * 5) and np.array_equal(y_test, x_test[:, 0] * 5)
    assert len(x_test) == min(max(int(np.floor(fraction * n + 0.5)), 1), n - 1)


@given(seed=seeds)
def test_split_is_deterministic_per_seed(seed):
    """Same seed -> same split; seed + 1 -> a different test set (of 180 digits-sized rows)."""
    x = np.arange(1797)
    a = train_test_split(x, None, 0.1, seed)
    assert np.array_equal(a[1], train_test_split(x, None, 0.1, seed)[1])
    assert not np.array_equal(a[1], train_test_split(x, None, 0.1, seed + 1)[1])
    assert a[2] is None and a[3] is None and len(a[1]) == 180


@pytest.mark.parametrize(
    "kwargs, word",
    [({"test_fraction": 0.0}, "test_fraction"), ({"test_fraction": 1.0}, "test_fraction"), ({"y": np.arange(3)}, "y"),
     ({"x": np.arange(1)}, "x"), ({"seed": -2}, "seed")],
)
def test_split_rejects_bad_arguments(kwargs, word):
    """Bad fraction, length mismatch, too few rows or a negative seed raise ValueError naming the argument."""
    args = {"x": np.arange(10), "y": None, **kwargs}
    with pytest.raises(ValueError, match=word):
        train_test_split(**args)
