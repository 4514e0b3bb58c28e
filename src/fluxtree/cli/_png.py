"""A loss curve as a PNG image, with no plotting library: rasterise, then encode.

``line_plot`` draws a curve into an RGB pixel array (axes, grid, tick labels in a 5x7
bitmap font, a logarithmic y axis when every value is positive); ``encode_png`` writes any
``(height, width, 3)`` uint8 array as a PNG (8-bit RGB, no interlace, filter 0 on every
row, zlib-compressed, CRC-checked chunks); ``write_png`` saves it atomically.
"""
from __future__ import annotations

import math
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["encode_png", "line_plot", "write_png"]

# 5x7 glyphs, one 5-bit row per entry (top to bottom, bit 4 = leftmost pixel)
_FONT: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), "-": (0, 0, 0, 0x1F, 0, 0, 0),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08), "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08), "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0), "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03), " ": (0, 0, 0, 0, 0, 0, 0),
    "a": (0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F), "b": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E),
    "c": (0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E), "d": (0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F),
    "e": (0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E), "f": (0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08),
    "g": (0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E), "h": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11),
    "i": (0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E), "j": (0x02, 0, 0x06, 0x02, 0x02, 0x12, 0x0C),
    "k": (0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12), "l": (0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "m": (0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11), "n": (0, 0, 0x16, 0x19, 0x11, 0x11, 0x11),
    "o": (0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E), "p": (0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10),
    "q": (0, 0, 0x0D, 0x13, 0x0F, 0x01, 0x01), "r": (0, 0, 0x16, 0x19, 0x10, 0x10, 0x10),
    "s": (0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E), "t": (0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06),
    "u": (0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D), "v": (0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "w": (0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A), "x": (0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11),
    "y": (0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E), "z": (0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F),
}
_SCALE = 2                       # each font pixel is a 2x2 block
_ADVANCE = 6 * _SCALE            # glyph width 5 plus one column of space
_GLYPH_H = 7 * _SCALE

_WHITE = (255, 255, 255)
_INK = (40, 40, 40)
_GRID = (225, 225, 225)
_LINE = (31, 119, 180)


def _glyph_masks() -> dict[str, np.ndarray]:
    bits = np.array([16, 8, 4, 2, 1])
    masks = {}
    for ch, rows in _FONT.items():
        m = (np.array(rows)[:, None] & bits[None, :]) > 0
        masks[ch] = np.kron(m, np.ones((_SCALE, _SCALE), bool))
    return masks


_MASKS = _glyph_masks()


def text_width(text: str) -> int:
    """Width in pixels of ``text`` drawn by ``draw_text``."""
    return max(len(text) * _ADVANCE - _SCALE, 0)


def draw_text(img: np.ndarray, x: int, y: int, text: str, color: tuple = _INK) -> None:
    """Draw ``text`` with its top-left corner at (x, y): upper case as lower case, characters
    outside the font as blanks; pixels outside the image are dropped."""
    h, w, _ = img.shape
    for i, ch in enumerate(text.lower()):
        mask = _MASKS.get(ch)
        if mask is None:
            continue
        x0 = x + i * _ADVANCE
        ys, xs = np.nonzero(mask)
        ys, xs = ys + y, xs + x0
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        img[ys[keep], xs[keep]] = color


def _segment(img: np.ndarray, x0: float, y0: float, x1: float, y1: float,
             color: tuple, width: int = 2) -> None:
    """A straight line of ``width`` pixels, sampled at half-pixel steps."""
    h, w, _ = img.shape
    n = int(max(abs(x1 - x0), abs(y1 - y0)) * 2) + 1
    t = np.linspace(0.0, 1.0, n + 1)
    xs = np.round(x0 + (x1 - x0) * t).astype(np.int64)
    ys = np.round(y0 + (y1 - y0) * t).astype(np.int64)
    for dy in range(width):
        for dx in range(width):
            yy, xx = ys + dy - width // 2, xs + dx - width // 2
            keep = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            img[yy[keep], xx[keep]] = color


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag  # pragma: no cover - the loop always returns


def _linear_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi], with 2x and 5x added when that gives under three ticks."""
    ticks = [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if len(inside) < 3:
        more = sorted({m * t for t in ticks for m in (1, 2, 5)})
        inside = [t for t in more if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    return inside


def line_plot(values: Sequence[float], *, title: str = "", xlabel: str = "iteration",
              ylabel: str = "loss", width: int = 640, height: int = 400) -> np.ndarray:
    """An RGB image (``(height, width, 3)`` uint8) of ``values`` against their index.

    The y axis is logarithmic when every finite value is positive, linear otherwise;
    non-finite values are left out.

    >>> img = line_plot([1.0, 0.3, 0.1, 0.05], title="loss")
    >>> img.shape, img.dtype
    ((400, 640, 3), dtype('uint8'))
    """
    ys = np.asarray(values, dtype=np.float64)
    img = np.empty((height, width, 3), np.uint8)
    img[...] = _WHITE
    left, right, top, bottom = 92, 20, 50, 50
    pw, ph = width - left - right, height - top - bottom
    if pw < 20 or ph < 20:
        raise ValueError(f"a plot needs at least {left + right + 20}x{top + bottom + 20} "
                         f"pixels, got {width}x{height}.")
    draw_text(img, (width - text_width(title)) // 2, 8, title)
    draw_text(img, left + (pw - text_width(xlabel)) // 2, height - 22, xlabel)
    idx = np.flatnonzero(np.isfinite(ys))
    good = ys[idx]
    log = good.size > 0 and bool(np.all(good > 0))
    if good.size:
        lo, hi = float(good.min()), float(good.max())
    else:
        lo, hi = 0.0, 1.0
    if log:
        draw_text(img, 8, top - 20, ylabel + " (log)")
        if hi / lo < 1.5:
            lo, hi = lo / 1.25, hi * 1.25
        f_lo, f_hi = math.log10(lo), math.log10(hi)
        yticks = _log_ticks(lo, hi)
        to_y = lambda v: top + ph * (f_hi - np.log10(v)) / (f_hi - f_lo)
    else:
        draw_text(img, 8, top - 20, ylabel)
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5, hi + 0.5
        yticks = _linear_ticks(lo, hi)
        to_y = lambda v: top + ph * (hi - np.asarray(v)) / (hi - lo)   
    n = max(len(ys) - 1, 1)
    xticks = [t for t in _linear_ticks(0.0, float(n)) if float(t).is_integer()] or [0.0]
    to_x = lambda i: left + pw * np.asarray(i, np.float64) / n          
    for t in yticks:
        yy = round(float(to_y(t)))
        img[yy, left:left + pw] = _GRID
        label = f"{t:g}"
        draw_text(img, left - 8 - text_width(label), yy - _GLYPH_H // 2, label)
    for t in xticks:
        xx = round(float(to_x(t)))
        img[top:top + ph, xx] = _GRID
        label = f"{int(t)}"
        draw_text(img, xx - text_width(label) // 2, top + ph + 8, label)
    img[top:top + ph + 1, left] = _INK
    img[top + ph, left:left + pw + 1] = _INK
    px, py = to_x(idx), to_y(good) if good.size else good
    for k in range(len(idx) - 1):
        _segment(img, float(px[k]), float(py[k]), float(px[k + 1]), float(py[k + 1]), _LINE)
    if len(idx) == 1:
        _segment(img, float(px[0]), float(py[0]), float(px[0]), float(py[0]), _LINE, 4)
    return img


def _chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def encode_png(rgb: np.ndarray) -> bytes:
    """The bytes of a PNG file holding ``rgb``, a ``(height, width, 3)`` uint8 array.

    >>> encode_png(np.zeros((1, 1, 3), np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3 and rgb.shape[0] > 0 and rgb.shape[1] > 0):
        got = (f"shape {rgb.shape}, dtype {rgb.dtype}" if isinstance(rgb, np.ndarray)
               else type(rgb).__name__)
        raise ValueError(f"encode_png expects a (height, width, 3) uint8 array, got {got}.")
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), np.uint8)       # filter byte 0 (None) on each row
    raw[:, 1:] = rgb.reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write ``rgb`` to ``path`` as a PNG, atomically (a temporary file, then a rename)."""
    data = encode_png(rgb)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".png-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
