"""Figures as PNG files: image grids (one, or several side by side), 2-D scatter panels, 2-D sampling
trajectories, and curves.

Every function takes host NumPy arrays (call ``refdiff.backend.to_numpy`` first), draws one matplotlib figure
with the Agg canvas (``matplotlib.figure.Figure``: no pyplot, no display, no global state), writes it to
``path`` (a .png; missing parent folders are created) and returns the path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

DPI = 100
SAMPLE_COLOR = "tab:blue"
REFERENCE_COLOR = "0.75"  # light grey: the data drawn under the samples


def _host(name: str, x, ndim: int | None = None) -> np.ndarray:
    """x as a finite float64 host array (of ``ndim`` axes when given), or a clear error."""
    if not isinstance(x, (np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a host NumPy array (call refdiff.backend.to_numpy first), "
                        f"got {type(x).__module__}.{type(x).__name__}")
    a = np.asarray(x, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(a)))} NaN or inf values")
    return a


def _points_2d(name: str, x) -> np.ndarray:
    a = _host(name, x, ndim=2)
    if a.shape[1] != 2 or a.shape[0] < 1:
        raise ValueError(f"{name} must be an (N, 2) array of points with N >= 1, got shape {a.shape}")
    return a


def _png_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _limits(arrays: list[np.ndarray], margin: float = 0.08) -> tuple[float, float, float, float]:
    """A square box (x0, x1, y0, y1) around the 0.5-99.5 percentiles of all points: a few far outliers
    do not shrink the rest to a dot."""
    pts = np.concatenate(arrays)
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    center, half = (lo + hi) / 2, max(float(np.max(hi - lo)) / 2, 1e-6) * (1 + 2 * margin)
    return center[0] - half, center[0] + half, center[1] - half, center[1] + half


def _outside(pts: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """The fraction of points (N, 2) outside the box (x0, x1, y0, y1)."""
    x0, x1, y0, y1 = box
    inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
    return float(1.0 - np.mean(inside))


# ---------------------------------------------------------------------------------------------------------


def image_grid(images, nrow: int, path, title: str | None = None, row_labels=None) -> Path:
    """A grid of images, ``nrow`` images per row (torchvision's convention), rows filled left to right.

    images: (N, C, H, W) with C = 1 (grey) or 3 (RGB), values in [-1, 1] mapped to black..white (values outside
    are clipped for display); row_labels: one label per row (ceil(N / nrow) of them), written left of the row.
    """
    x = _host("images", images, ndim=4)
    N, C = x.shape[:2]
    if N < 1 or C not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with N >= 1 and C in (1, 3), got shape {x.shape}")
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow (images per row) must be an integer >= 1, got {nrow!r}")
    rows, cols = math.ceil(N / nrow), min(int(nrow), N)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels must hold one label per row ({rows} rows), got {len(row_labels)}")
    path = _png_path(path)
    longest = max((len(line) for s in row_labels or [] for line in str(s).split("\n")), default=0)
    label_width = 0.09 * longest                                  # inches for the row labels, at fontsize 9
    fig = Figure(figsize=(0.9 * cols + label_width + 0.3, 0.9 * rows + (0.5 if title else 0.2)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = np.clip(x, -1.0, 1.0)
    for i in range(rows * cols):
        ax = axes[i // cols, i % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= N:
            ax.set_axis_off()
            continue
        if C == 1:
            ax.imshow(shown[i, 0], cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow((shown[i].transpose(1, 2, 0) + 1.0) / 2.0, interpolation="nearest")
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(str(label), rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def image_grids(panels: dict, nrow: int, path, title: str | None = None) -> Path:
    """Several image grids side by side, one panel per entry of ``panels`` ({panel title: (N, C, H, W) images}),
    each drawn as one picture: its images ``nrow`` to a row (rows filled left to right), a grey line of one pixel
    between them. Values in [-1, 1] map to black..white (clipped for display); C = 1 (grey) or 3 (RGB), the same
    H, W and C in every panel."""
    if not isinstance(panels, dict) or not panels:
        raise ValueError("panels must be a non-empty dict {title: (N, C, H, W) images}")
    grids = {str(k): _host(f"panels[{k!r}]", v, ndim=4) for k, v in panels.items()}
    shapes = {g.shape[1:] for g in grids.values()}
    if len(shapes) != 1 or next(iter(shapes))[0] not in (1, 3) or min(g.shape[0] for g in grids.values()) < 1:
        raise ValueError(f"panels must hold N >= 1 images of one shape (C, H, W), C in (1, 3), got shapes "
                         f"{sorted(g.shape for g in grids.values())}")
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow (images per row) must be an integer >= 1, got {nrow!r}")
    path = _png_path(path)
    mosaics = [_mosaic(np.clip(g, -1.0, 1.0), int(nrow)) for g in grids.values()]
    height, width = max(m.shape[0] for m in mosaics), max(m.shape[1] for m in mosaics)
    scale = 2.2 / max(width, 1)                                   # inches per pixel: a panel about 2.2 inches wide
    fig = Figure(figsize=(len(mosaics) * (width * scale + 0.2), height * scale + (0.8 if title else 0.5)),
                 layout="constrained")
    for ax, (name, m) in zip(np.atleast_1d(fig.subplots(1, len(mosaics))), zip(grids, mosaics)):
        shown = m[..., 0] if m.shape[-1] == 1 else (m + 1.0) / 2.0   # (h, w) grey or (h, w, 3) in [0, 1]
        ax.imshow(shown, cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _mosaic(x: np.ndarray, nrow: int) -> np.ndarray:
    """Images x (N, C, H, W) tiled nrow to a row with a 1-pixel line of 0 (grey) between them and in empty cells:
    (rows (H + 1) - 1, cols (W + 1) - 1, C)."""
    N, C, H, W = x.shape
    rows, cols = math.ceil(N / nrow), min(nrow, N)
    cells = np.zeros((rows * cols, C, H + 1, W + 1))              # each image with its line below and right
    cells[:N, :, :H, :W] = x
    tiled = cells.reshape(rows, cols, C, H + 1, W + 1).transpose(0, 3, 1, 4, 2)  # (rows, H+1, cols, W+1, C)
    return tiled.reshape(rows * (H + 1), cols * (W + 1), C)[:-1, :-1]


def scatter_2d(panels: dict, path, reference=None, ncols: int | None = None, title: str | None = None,
               reference_label: str = "data") -> Path:
    """One scatter panel per entry of ``panels`` ({panel title: (N, 2) points}), on shared square axes.

    reference: (M, 2) points drawn in light grey under every panel (the data the samples should match);
    ncols: panels per row (default min(len(panels), 4)). The shared axes frame the reference with a margin
    (without one: the 0.5-99.5 percentiles of all points), so a panel whose samples spread far beyond the data
    keeps the others legible; such a panel says in red which fraction of its points lies outside the frame.
    """
    if not isinstance(panels, dict) or not panels:
        raise ValueError("panels must be a non-empty dict {title: (N, 2) points}")
    data = {str(k): _points_2d(f"panels[{k!r}]", v) for k, v in panels.items()}
    ref = None if reference is None else _points_2d("reference", reference)
    ncols = min(len(data), 4) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols must be an integer >= 1, got {ncols!r}")
    path = _png_path(path)
    rows, cols = math.ceil(len(data) / ncols), min(int(ncols), len(data))
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows + (0.5 if title else 0.1)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    box = _limits([ref], margin=0.2) if ref is not None else _limits(list(data.values()))
    for ax in axes.flat[len(data):]:
        ax.set_axis_off()
    for i, (ax, (name, pts)) in enumerate(zip(axes.flat, data.items())):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c=REFERENCE_COLOR, linewidths=0, label=reference_label)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c=SAMPLE_COLOR, alpha=0.6, linewidths=0, label="samples")
        ax.set(xlim=box[:2], ylim=box[2:], aspect="equal")
        ax.set_title(name, fontsize=9)
        if (outside := _outside(pts, box)) > 0:
            ax.text(0.03, 0.03, f"{100 * outside:.2g}% of points outside the frame", transform=ax.transAxes,
                    fontsize=7, color="tab:red")
        ax.tick_params(labelsize=7)
        if i == 0 and ref is not None:
            ax.legend(fontsize=7, loc="upper right", markerscale=4, framealpha=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def trajectories_2d(steps, path, title: str | None = None, reference=None, max_paths: int = 200) -> Path:
    """Paths of 2-D particles through a sampling chain, coloured from the start (dark) to the end (yellow).

    steps: a list of (N, 2) arrays, the positions of the same N particles at each step, first to last;
    the first ``max_paths`` particles are drawn, with their start (grey x) and end (black dot);
    reference: (M, 2) points drawn in light grey underneath (the data).
    """
    if not isinstance(steps, (list, tuple)) or len(steps) < 2:
        raise ValueError("steps must be a list of at least 2 (N, 2) arrays, first to last")
    points = [_points_2d(f"steps[{i}]", s) for i, s in enumerate(steps)]
    if len({p.shape for p in points}) != 1:
        raise ValueError("steps must all have the same shape (N, 2): the same particles at each step, got "
                         f"shapes {sorted({p.shape for p in points})}")
    chain = np.stack(points)                                      # (S, N, 2)
    if isinstance(max_paths, bool) or not isinstance(max_paths, (int, np.integer)) or max_paths < 1:
        raise ValueError(f"max_paths must be an integer >= 1, got {max_paths!r}")
    ref = None if reference is None else _points_2d("reference", reference)
    path = _png_path(path)
    chain = chain[:, :max_paths]                                  # (S, P, 2)
    S, P = chain.shape[:2]
    segments = np.stack([chain[:-1], chain[1:]], axis=2)          # (S - 1, P, 2 ends, 2)
    progress = np.repeat(np.arange(S - 1) / max(S - 2, 1), P)     # colour of each segment: 0 at the start, 1 at the end
    fig = Figure(figsize=(6.2, 5.2), layout="constrained")
    ax = fig.subplots()
    if ref is not None:
        ax.scatter(ref[:, 0], ref[:, 1], s=3, c=REFERENCE_COLOR, linewidths=0, label="data", zorder=0)
    lines = LineCollection(segments.reshape(-1, 2, 2), array=progress, cmap="viridis", linewidths=0.6, alpha=0.7)
    ax.add_collection(lines)
    ax.scatter(chain[0, :, 0], chain[0, :, 1], s=10, marker="x", c="0.45", linewidths=0.7, label="start", zorder=3)
    ax.scatter(chain[-1, :, 0], chain[-1, :, 1], s=6, c="black", label="end", zorder=4)
    x0, x1, y0, y1 = _limits([chain.reshape(-1, 2)] + ([] if ref is None else [ref]))
    ax.set(xlim=(x0, x1), ylim=(y0, y1), aspect="equal")
    ax.legend(fontsize=8, loc="upper right", markerscale=2)
    bar = fig.colorbar(lines, ax=ax, shrink=0.8)
    bar.set_label("step, as a fraction of the chain (0 = start, 1 = end)", fontsize=8)
    ax.set_title(title or f"{P} trajectories", fontsize=10)
    return _save(fig, path)


def curves(series: dict, path, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False,
           title: str | None = None, hlines: dict | None = None, hbands: dict | None = None) -> Path:
    """Line plot with markers: one line per entry of ``series`` ({label: (xs, ys)}).

    hlines: {label: y} horizontal dashed reference lines (a floor, a target); hbands: {label: (low, high)}
    shaded horizontal bands (a floor's spread); logx / logy: log axes.
    """
    if not isinstance(series, dict) or not series:
        raise ValueError("series must be a non-empty dict {label: (xs, ys)}")
    lines = {}
    for label, value in series.items():
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"series[{label!r}] must be a pair (xs, ys), got {type(value).__name__}")
        xs, ys = _host(f"series[{label!r}] xs", value[0], ndim=1), _host(f"series[{label!r}] ys", value[1], ndim=1)
        if xs.shape != ys.shape or xs.shape[0] < 1:
            raise ValueError(f"series[{label!r}] needs xs and ys of the same length >= 1, got {xs.shape}, {ys.shape}")
        if (logx and np.any(xs <= 0)) or (logy and np.any(ys <= 0)):
            raise ValueError(f"series[{label!r}] must be > 0 on a log axis")
        lines[str(label)] = (xs, ys)
    path = _png_path(path)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", markersize=4, label=label)
    for label, y in (hlines or {}).items():
        ax.axhline(float(y), color="0.4", linestyle="--", linewidth=1.0, label=label)
    for label, (low, high) in (hbands or {}).items():
        ax.axhspan(float(low), float(high), color="0.5", alpha=0.15, linewidth=0, label=label)
    ax.set(xscale="log" if logx else "linear", yscale="log" if logy else "linear", xlabel=xlabel, ylabel=ylabel)
    if logx:  # label the data's own x values (5, 10, 20, ...) instead of powers of ten only
        ticks = np.unique(np.concatenate([xs for xs, _ in lines.values()]))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
