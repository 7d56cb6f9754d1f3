"""The user's own images: a NumPy .npz archive or a folder of image files; and a train/test split.

Both loaders return x: (N, C, H, W) host NumPy float32 (or float64) in [-1, 1] and y: (N,) int64
labels, or None for unlabelled data, and raise ValueError / FileNotFoundError naming the file and
what is wrong. Archives are read with np.load(..., allow_pickle=False): object arrays are refused.

Pixel values: uint8 (and other integer arrays within 0..255) map by x = (2k - 255) / 255, which is
k / 255 * 2 - 1 with one rounding, so 0 -> -1 and 255 -> +1; float arrays must already lie in [-1, 1]
(a warning is issued when they are all >= 0, the sign of [0, 1] data that still needs 2 x - 1).
Image files map by their own bit depth: x = (2k - top) / top with top = 255 for 8-bit files and
65535 for 16-bit greyscale ones (16-bit RGB PNGs reach refdiff as 8-bit: Pillow keeps their high byte).
Both loaders resize to a given size= alike: Pillow's Lanczos filter on each image at its own depth
(8-bit levels as 8-bit images), so uint8 images load equal from an archive and from PNG files.

Channel axis of a rank-4 array (CHANNELS = 1, 3 or 4): it is (N, H, W, C) when the last axis is in
CHANNELS and smaller than axis 1, otherwise (N, C, H, W), whose axis 1 must then be in CHANNELS.
So (N, 32, 32, 3) and (N, 4, 4, 3) are channels-last, (N, 3, 32, 32) and (N, 1, 28, 28) are
channels-first. A rank-3 array (N, H, W) is greyscale, C = 1.
"""

import math
import warnings
import zipfile
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from refdiff.data.digits import _check_dtype
from refdiff.memory import check_fits

IMAGE_KEYS = ("x", "images", "x_train")  # the image array of an archive has exactly one of these names
LABEL_KEYS = ("y", "labels", "y_train")  # x pairs with y, images with labels, x_train with y_train
CHANNELS = (1, 3, 4)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes read as one channel when colors=None
_GREY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # how Pillow opens 16-bit greyscale files


# ---------------------------------------------------------------------------------------------
# checks and conversions shared by both loaders


def _existing(path, kind):
    """path as a Path; FileNotFoundError if it does not exist, ValueError if it is not a `kind`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {'folder' if kind == 'dir' else 'file'}")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{path}: is a folder, expected an .npz file (for a folder of images use load_image_folder)")
    if kind == "dir" and not path.is_dir():
        raise ValueError(f"{path}: is a file, expected a folder of images (for an .npz file use load_npz)")
    return path


def _to_nchw(a, where):
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W) by the channel rule of the module docstring."""
    if a.ndim == 3:
        return a[:, None]  # (N, 1, H, W)
    if a.ndim != 4:
        raise ValueError(
            f"{where}: images must have rank 3 (N, H, W) or 4 (N, H, W, C) / (N, C, H, W), got shape {a.shape}"
        )
    if a.shape[-1] in CHANNELS and a.shape[-1] < a.shape[1]:
        return np.moveaxis(a, -1, 1)  # (N, H, W, C) -> (N, C, H, W)
    if a.shape[1] in CHANNELS:
        return a
    raise ValueError(f"{where}: cannot find a channel axis of size {CHANNELS} in shape {a.shape} (axis 1 or last)")


def _levels_to_unit(k, top, dtype):
    """Integer levels k in 0..top -> x = (2k - top) / top in dtype, so 0 -> -1 and top -> +1."""
    # The numerator is exact (|2k - top| <= 65535 < 2^24), so one correctly rounded division: -1 and
    # +1 are hit exactly, and float32 results equal float32(float64 results) (double rounding of a
    # quotient is innocuous from binary64 to binary32)
    x = k.astype(dtype)
    x *= 2
    x -= top
    x /= top
    return x


def _check_pixels(a, where):
    """Integer pixels must lie in 0..255; float pixels must be finite and in [-1, 1] (a warning when none is
    negative, the sign of [0, 1] data)."""
    if a.dtype.kind in "iu":
        low, high = int(a.min()), int(a.max())
        if low < 0 or high > 255:
            raise ValueError(f"{where}: integer images must lie in 0..255 (uint8), got values in [{low}, {high}]")
        return
    if a.dtype.kind != "f":
        raise ValueError(f"{where}: images must be uint8 or float, got dtype {a.dtype}")
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: {int(bad.sum())} non-finite values (NaN or inf) in the images, first at {first}")
    low, high = float(a.min()), float(a.max())
    if low < -1 - 1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"{where}: float images must lie in [-1, 1], got values in [{low:.6g}, {high:.6g}]; "
            "rescale them (2 x - 1 for [0, 1] data, x / 127.5 - 1 for 0..255 data) or save 0..255 data as uint8"
        )
    if low >= 0:
        warnings.warn(f"{where}: float images lie in [{low:.3g}, {high:.3g}], none negative: if they are [0, 1] data, "
                      "rescale them by 2 x - 1 to [-1, 1]", UserWarning, stacklevel=4)  # the caller of load_npz


def _resized_array(x, size, where):
    """Checked pixels (N, C, H, W) -> (N, C, size[0], size[1]), each channel of each image resized as an image
    file is (_resized: Lanczos): integer levels as 8-bit images, so that a uint8 archive and the same images
    saved as PNG files load equal; floats as 32-bit float images (float64 pixels are rounded to float32)."""
    if x.shape[2:] == size:
        return x  # nothing to resample (and float64 pixels stay float64)
    n, c = x.shape[:2]
    eight_bit = x.dtype.kind in "iu"
    out_dtype = np.dtype(np.uint8 if eight_bit else np.float32)
    check_fits(n * c * size[0] * size[1] * (out_dtype.itemsize + 8),  # resized, then converted (8 bytes at most)
               f"{where}: resizing {n} images to {size[0]}x{size[1]} (height x width)",
               "resize them smaller (size=, refdiff's --image-size)")
    Image, _ = _import_pillow()
    out = np.empty((n, c, *size), dtype=out_dtype)
    for i, j in np.ndindex(n, c):
        out[i, j] = np.asarray(_resized(Image, Image.fromarray(x[i, j].astype(out_dtype)), size))
    return out


def _check_images(a, where, dtype, size=None):
    """Any accepted image array -> (N, C, H, W) of dtype in [-1, 1], resized to size (H, W) unless None;
    ValueError for empty data."""
    x = _to_nchw(a, where)
    if x.size == 0:
        raise ValueError(f"{where}: empty dataset, images have shape {a.shape}")
    _check_pixels(x, where)
    if size is not None:
        x = _resized_array(x, size, where)
    if x.dtype.kind in "iu":
        return _levels_to_unit(x, 255, dtype)  # x = (2k - 255) / 255
    # the clip removes rounding beyond +-1 (<= 1e-6) and Lanczos's overshoot at edges (Pillow clips 8-bit
    # results the same way)
    return np.clip(x, -1, 1).astype(dtype)


def _check_labels(b, n, where, num_classes):
    """Labels (N,) or (N, 1), integer (or whole floats), in [0, num_classes) -> (N,) int64."""
    if b.ndim == 2 and b.shape[1] == 1:
        b = b[:, 0]
    if b.ndim != 1:
        hint = " (one-hot labels? store labels.argmax(1))" if b.ndim == 2 else ""
        raise ValueError(f"{where}: labels must have shape (N,), got {b.shape}{hint}")
    if b.shape[0] != n:
        raise ValueError(f"{where}: {b.shape[0]} labels for {n} images, the lengths must match")
    if b.dtype.kind == "f" and not (np.isfinite(b).all() and np.array_equal(b, np.round(b))):
        raise ValueError(f"{where}: labels must be whole numbers, got non-integer or non-finite float labels")
    if b.dtype.kind not in "iuf":
        raise ValueError(f"{where}: labels must be integers, got dtype {b.dtype}")
    low, high = b.min(), b.max()
    upper = np.iinfo(np.int64).max if num_classes is None else num_classes - 1
    if low < 0 or high > upper:
        allowed = "integers >= 0" if num_classes is None else f"integers in [0, {num_classes})"
        raise ValueError(f"{where}: labels must be {allowed}, got values in [{low}, {high}]")
    return b.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# .npz archives


def _pick_keys(names, where):
    """(image key, label key or None) among the archive's array names; ValueError if none or ambiguous."""
    found = [k for k in IMAGE_KEYS if k in names]
    if not found:
        held = sorted(names)
        raise ValueError(f"{where}: no image array named one of {IMAGE_KEYS}; the archive holds {len(held)} arrays: "
                         f"{', '.join(held[:5])}{', ...' if len(held) > 5 else ''}")
    if len(found) > 1:
        raise ValueError(f"{where}: several image arrays {found}, expected exactly one of {IMAGE_KEYS}")
    labels = [k for k in LABEL_KEYS if k in names]
    partner = LABEL_KEYS[IMAGE_KEYS.index(found[0])]
    if partner in labels or not labels:
        return found[0], (partner if partner in labels else None)
    if len(labels) > 1:
        raise ValueError(f"{where}: several label arrays {labels} and none is {partner!r}, the partner of {found[0]!r}")
    return found[0], labels[0]


def _read_array(npz, key, where):
    try:
        return npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # object arrays need pickle: refused
        raise ValueError(f"{where}: cannot read array {key!r} ({e})") from e


def load_npz(path, dtype=np.float32, num_classes=None, size=None):
    """Load images (and labels, when present) from a NumPy .npz archive.

    Math: x = (2k - 255) / 255 for integer pixels k in 0..255; float pixels are taken as they are.

    path: the .npz file, holding one image array named `x`, `images` or `x_train` (rank 3 or 4,
    channel axis by the rule of the module docstring) and optionally labels named `y`, `labels` or
    `y_train` (the partner name is preferred; `x_test` and other arrays are ignored).
    dtype: np.float32 or np.float64; num_classes: labels must lie in [0, num_classes), or only be
    >= 0 when None. size: None (keep the images' size), an int S or a pair (H, W): every image is resized
    to it as load_image_folder resizes files (Lanczos, per channel; integer pixels as 8-bit images, float
    ones as float32 images, clipped to [-1, 1] after; needs Pillow).
    Returns x: (N, C, H, W) of dtype in [-1, 1]; y: (N,) int64, or None without a label array.
    """
    _check_dtype(dtype)
    size = _check_size(size)
    path = _existing(path, "file")
    with open(path, "rb") as f:  # our own handle: closed even when np.load fails half-way
        try:
            npz = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a readable .npz archive ({e})") from e
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: holds one .npy array, expected an .npz archive (np.savez(path, x=..., y=...))")
        with npz:
            image_key, label_key = _pick_keys(npz.files, path)
            a = _read_array(npz, image_key, path)
            b = None if label_key is None else _read_array(npz, label_key, path)
    x = _check_images(a, f"{path}: array {image_key!r}", np.dtype(dtype), size)
    y = None if b is None else _check_labels(b, x.shape[0], f"{path}: array {label_key!r}", num_classes)
    return x, y


# ---------------------------------------------------------------------------------------------
# folders of images (Pillow, imported only here)


def _import_pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError as e:
        raise ImportError("load_image_folder reads images with Pillow, not installed: pip install pillow") from e
    return Image, ImageOps


def _image_files(folder):
    """Image files directly in folder (by extension, case-insensitive; hidden files skipped), sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(root):
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_folder_fits(Image, files, size, dtype):
    """Refuse, before reading them, images that cannot fit in memory once read: len(files) x 3 x H x W
    values of dtype and the decoded pixels (2 bytes each at most); (H, W) is size, or the first file's."""
    if size is None:
        with Image.open(files[0]) as im:  # reads the header only
            size = im.size[::-1]
    check_fits(len(files) * 3 * size[0] * size[1] * (dtype.itemsize + 2),
               f"reading {len(files)} images of {size[0]}x{size[1]} (height x width)",
               "resize them smaller (size=, refdiff's --image-size)")


def image_folder_classes(path):
    """The class names of an image folder: its subfolder names, sorted (label k is names[k]); () if none."""
    return tuple(p.name for p in _class_folders(_existing(path, "dir")))


def _folder_listing(root):
    """(files, labels or None): every image with its class index, or the images of root unlabelled."""
    classes, top = _class_folders(root), _image_files(root)
    if classes and top:
        raise ValueError(f"{root}: holds both images ({top[0].name}, ...) and subfolders ({classes[0].name}, ...); "
                         "put every image in a class subfolder, or remove the subfolders")
    if not classes:
        if not top:
            raise ValueError(f"{root}: empty dataset, no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return top, None
    files, labels = [], []
    for k, folder in enumerate(classes):
        mine = _image_files(folder)
        if not mine:
            raise ValueError(f"{folder}: class folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        files += mine
        labels += [k] * len(mine)
    return files, np.asarray(labels, dtype=np.int64)


def _check_size(size):
    """None, an int S (-> (S, S)) or a pair (H, W) of ints >= 1 -> None or (H, W)."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, Integral) else size
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in pair)):
        raise ValueError(f"size must be None, an int >= 1 or a pair (H, W) of ints >= 1, got {size!r}")
    return tuple(int(v) for v in pair)


def _resized(Image, im, size):
    """im resized to size (H, W) with Lanczos, or im itself when size is None or already met."""
    if size is None or im.size == (size[1], size[0]):
        return im
    return im.resize((size[1], size[0]), Image.Resampling.LANCZOS)  # Pillow sizes are (W, H)


def _grey16_levels(Image, im, mode, size):
    """A 16-bit greyscale image -> (H, W) int32 levels in 0..65535, or (H, W, 3) with R = G = B for mode "RGB"."""
    k = np.asarray(_resized(Image, im.convert("I"), size))  # "I" (32-bit): resized without clipping to 8 bits
    k = np.clip(k, 0, 65535)  # Lanczos overshoots near edges; Pillow clips its 8-bit results the same way
    return np.repeat(k[..., None], 3, axis=-1) if mode == "RGB" else k


def _read_image(Image, ImageOps, file, mode, size):
    """One file -> (k, top): integer levels k in 0..top, (H, W) or (H, W, 3), upright (EXIF), in `mode`
    ("L" / "RGB"), resized if asked; top = 65535 for 16-bit greyscale files (read at full depth), else 255."""
    try:
        with Image.open(file) as im:
            # 16-bit grey opens as "I;16" (or "I" in older Pillow, from a PNG, whose depth is at most 16)
            grey16 = im.mode in _GREY16_MODES or (im.mode == "I" and im.format == "PNG")
            grey = im.mode in _GREY_MODES
            im = ImageOps.exif_transpose(im)
            if grey16:
                return _grey16_levels(Image, im, mode, size), 65535
            return np.asarray(_resized(Image, im.convert(mode or ("L" if grey else "RGB")), size)), 255
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{file}: cannot read as an image ({e})") from e


def _stack_levels(images, dtype):
    """[(k, top), ...] of one size -> (N, C, H, W) of dtype, each image by its own top: x = (2k - top) / top.

    C = 3 when any image is colour (grey ones then get R = G = B, as Pillow does), else 1.
    """
    colour = any(k.ndim == 3 for k, _ in images)
    h, w = images[0][0].shape[:2]
    x = np.empty((len(images), 3 if colour else 1, h, w), dtype=dtype)
    for i, (k, top) in enumerate(images):
        k = np.moveaxis(k, -1, 0) if k.ndim == 3 else k[None]  # (C, H, W); C = 1 broadcasts over 3
        x[i] = _levels_to_unit(k, top, dtype)
    return x


def load_image_folder(path, size=None, colors=None, dtype=np.float32):
    """Load a folder of images: one subfolder per class gives labels, a flat folder gives none.

    Math: x = (2k - top) / top for the pixel values k, top by each file's own bit depth: 255 for 8-bit
    files, 65535 for 16-bit greyscale ones, read at full depth (16-bit RGB PNGs come from Pillow as
    8-bit, their high byte). Alpha channels are dropped.

    path: a folder either of class subfolders (label k = k-th subfolder name in sorted order, see
    image_folder_classes; hidden entries skipped) or of images only; files are read in sorted order
    and recognised by extension (IMAGE_EXTENSIONS). size: None (all images must then share one size),
    an int S or a pair (H, W): every image is resized to it (Lanczos; the aspect ratio is not kept).
    colors: 1 (grey) or 3 (RGB), or None for 1 when every file is greyscale, else 3.
    dtype: np.float32 or np.float64. Needs Pillow (pip install pillow), imported only here.
    Returns x: (N, colors, H, W) of dtype in [-1, 1]; y: (N,) int64, or None for a flat folder.
    """
    _check_dtype(dtype)
    size = _check_size(size)
    if colors not in (None, 1, 3):
        raise ValueError(f"colors must be None, 1 (grey) or 3 (RGB), got {colors!r}")
    root = _existing(path, "dir")
    files, y = _folder_listing(root)
    Image, ImageOps = _import_pillow()
    _check_folder_fits(Image, files, size, np.dtype(dtype))
    mode = {None: None, 1: "L", 3: "RGB"}[colors]
    images = [_read_image(Image, ImageOps, f, mode, size) for f in files]  # (k, top), k (H, W) or (H, W, 3)
    (first, _), shape = images[0], images[0][0].shape[:2]
    for f, (k, _) in zip(files, images):
        if k.shape[:2] != shape:
            raise ValueError(f"{root}: images differ in size: {files[0]} is {first.shape[1]}x{first.shape[0]}, "
                             f"{f} is {k.shape[1]}x{k.shape[0]} (width x height); pass size= to resize them all")
    return _stack_levels(images, np.dtype(dtype)), y


# ---------------------------------------------------------------------------------------------
# held-out split


def train_test_split(x, y=None, test_fraction=0.1, seed=0):
    """Split rows of x (and y) at random into a training part and a held-out test part.

    Math: perm = default_rng(seed).permutation(N); test = sorted(perm[:n_test]), train = the rest,
    with n_test = round(test_fraction * N) kept within [1, N - 1]. Both parts keep the original order.

    x: (N, ...) NumPy array, N >= 2; y: (N,) or None; test_fraction: in (0, 1); seed: int >= 0.
    Returns x_train, x_test, y_train, y_test (scikit-learn's order); the y parts are None when y is.
    """
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"x must have at least 2 rows to split, got shape {x.shape}")
    n = x.shape[0]
    if y is not None and (np.ndim(y) < 1 or np.shape(y)[0] != n):
        raise ValueError(f"y must have one entry per row of x ({n}), got shape {np.shape(y)}")
    if not isinstance(test_fraction, Real) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    n_test = min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)  # round half up, then clamp
    perm = np.random.default_rng(seed).permutation(n)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if y is None:
        return x[train], x[test], None, None
    y = np.asarray(y)
    return x[train], x[test], y[train], y[test]
