"""Minimal PNG reading and writing: pure Python, zlib and numpy, no Pillow.

Supported: 8-bit grayscale, gray+alpha, RGB and RGBA, non-interlaced, all five
row filters (PNG spec, 2nd ed., Sec. 9.2: None, Sub, Up, Average, Paeth). Anything
else (16-bit or 1/2/4-bit samples, palette images, Adam7 interlacing) is refused
with a :class:`BadInputError` naming the file and the feature. Ancillary chunks
(gamma, text, ...) are ignored; every chunk's CRC is checked.

Arrays are ``uint8 [H, W]`` (grayscale) or ``uint8 [H, W, C]`` with C = 2 (gray+alpha),
3 (RGB) or 4 (RGBA). Writing uses filter 0 (None) on every row and is atomic.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ddpm_tools.errors import BadInputError
from ddpm_tools.io.files import atomic_write_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZLIB_LEVEL = 6  # compression level of written files (zlib default)

# color type -> channels (samples per pixel); PNG spec Table 11.1
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
# channels -> color type, for writing
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
_IHDR_LEN = 13
_HEADER_BYTES = len(PNG_SIGNATURE) + 8 + _IHDR_LEN + 4  # signature + first chunk (IHDR)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PngHeader:
    """The IHDR of a supported PNG (8-bit, non-palette, non-interlaced)."""

    height: int  # rows, pixels
    width: int  # columns, pixels
    channels: int  # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape :func:`read_png` returns: ``(H, W)`` or ``(H, W, C)``."""
        if self.channels == 1:
            return (self.height, self.width)
        return (self.height, self.width, self.channels)


def _unsupported(path: PathLike, feature: str) -> BadInputError:
    return BadInputError(
        f"{path} is {feature}, which the built-in PNG reader does not support; "
        "convert it to a non-interlaced 8-bit grayscale, RGB or RGBA PNG"
    )


def _corrupt(path: PathLike, what: str) -> BadInputError:
    return BadInputError(f"{path} is not a valid PNG file ({what}); re-export or replace it")


def _read_file(path: PathLike, size: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except FileNotFoundError:
        raise BadInputError(f"PNG file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise BadInputError(f"{path} is a folder, not a PNG file; pass a .png file") from None
    except OSError as e:
        raise BadInputError(f"cannot read PNG file {path}: {e.strerror}") from None


def _chunks(data: bytes, path: PathLike) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(type, payload)`` of each chunk after the signature, checking CRCs."""
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise _corrupt(path, "truncated chunk header")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            raise _corrupt(path, f"chunk {kind!r} is truncated")
        payload = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + payload) != crc:
            raise _corrupt(path, f"CRC mismatch in chunk {kind!r}")
        yield kind, payload
        pos = end + 4


def _parse_ihdr(payload: bytes, path: PathLike) -> PngHeader:
    """Check an IHDR payload and refuse the features this reader does not support."""
    if len(payload) != _IHDR_LEN:
        raise _corrupt(path, "IHDR has the wrong length")
    width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", payload)
    if width == 0 or height == 0:
        raise _corrupt(path, f"image size {width}x{height}")
    if color == 3:
        raise _unsupported(path, "a palette (indexed-color) PNG")
    if color not in _CHANNELS:
        raise _corrupt(path, f"unknown color type {color}")
    if depth != 8:
        raise _unsupported(path, f"a {depth}-bit PNG")
    if comp != 0 or filt != 0:
        raise _corrupt(path, "unknown compression or filter method")
    if interlace == 1:
        raise _unsupported(path, "an interlaced (Adam7) PNG")
    if interlace != 0:
        raise _corrupt(path, f"unknown interlace method {interlace}")
    return PngHeader(height=height, width=width, channels=_CHANNELS[color])


def _check_signature(data: bytes, path: PathLike) -> None:
    if data[: len(PNG_SIGNATURE)] != PNG_SIGNATURE:
        raise BadInputError(f"{path} is not a PNG file (bad signature); pass a .png image")


def read_png_header(path: PathLike) -> PngHeader:
    """Size and channels of a PNG from its first bytes (no decoding); same checks as read."""
    data = _read_file(path, _HEADER_BYTES)
    _check_signature(data, path)
    kind, payload = next(_chunks(data, path), (b"", b""))
    if kind != b"IHDR":
        raise _corrupt(path, "first chunk is not IHDR")
    return _parse_ihdr(payload, path)


def _unfilter_row(kind: int, row: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one row's filter (PNG spec Sec. 9.2). row, prev: ``[stride]`` uint8."""
    if kind == 0:  # None
        return row
    if kind == 1:  # Sub: Recon(x) = Filt(x) + Recon(a), a running sum mod 256 per channel
        return np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
    if kind == 2:  # Up: Recon(x) = Filt(x) + Recon(b)
        return row + prev
    cur = bytearray(row.tobytes())
    up = prev.tobytes()
    n = len(cur)
    if kind == 3:  # Average: Recon(x) = Filt(x) + floor((Recon(a) + Recon(b)) / 2)
        for i in range(bpp):
            cur[i] = (cur[i] + (up[i] >> 1)) & 0xFF
        for i in range(bpp, n):
            cur[i] = (cur[i] + ((cur[i - bpp] + up[i]) >> 1)) & 0xFF
    else:  # Paeth: Recon(x) = Filt(x) + PaethPredictor(a, b, c), spec Sec. 9.4
        for i in range(bpp):
            cur[i] = (cur[i] + up[i]) & 0xFF  # a = c = 0, so the predictor is b
        for i in range(bpp, n):
            a, b, c = cur[i - bpp], up[i], up[i - bpp]
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            if pa <= pb and pa <= pc:
                pred = a
            elif pb <= pc:
                pred = b
            else:
                pred = c
            cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), dtype=np.uint8)


def read_png(path: PathLike) -> np.ndarray:
    """Decode a PNG file to ``uint8 [H, W]`` (gray) or ``uint8 [H, W, C]`` (C = 2, 3, 4).

    Raises :class:`BadInputError` naming the file for a missing, corrupt or
    unsupported (16-bit, palette, interlaced) PNG.
    """
    data = _read_file(path)
    _check_signature(data, path)
    header: PngHeader | None = None
    idat: list[bytes] = []
    ended = False
    for kind, payload in _chunks(data, path):
        if header is None:
            if kind != b"IHDR":
                raise _corrupt(path, "first chunk is not IHDR")
            header = _parse_ihdr(payload, path)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            ended = True
            break
        elif kind[0] & 0x20 == 0 and kind not in (b"PLTE", b"IHDR"):
            raise _unsupported(path, f"a PNG with the unknown critical chunk {kind!r}")
    if header is None or not idat or not ended:
        raise _corrupt(path, "missing IHDR, IDAT or IEND chunk")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise _corrupt(path, f"compressed data is damaged: {e}") from None
    h, w, bpp = header.height, header.width, header.channels
    stride = w * bpp
    if len(raw) < h * (stride + 1):
        raise _corrupt(path, "image data is shorter than its size says")
    rows = np.frombuffer(raw, dtype=np.uint8, count=h * (stride + 1)).reshape(h, stride + 1)
    if int(rows[:, 0].max()) > 4:
        raise _corrupt(path, f"unknown row filter type {int(rows[:, 0].max())}")
    out = np.empty((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(h):
        prev = out[y] = _unfilter_row(int(rows[y, 0]), rows[y, 1:], prev, bpp)
    return out.reshape(header.shape)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of ``img``: ``uint8 [H, W]`` or ``uint8 [H, W, C]`` with C in 1..4."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise BadInputError(
            f"a PNG image must be uint8 (got {img.dtype}); convert it with .astype(np.uint8)"
        )
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in _COLOR_TYPE or min(img.shape[:2]) < 1:
        raise BadInputError(
            f"a PNG image must have shape [H, W] or [H, W, C] with C in 1..4 and H, W >= 1 "
            f"(got {img.shape}); reshape it"
        )
    h, w, c = img.shape
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    rows = np.zeros((h, w * c + 1), dtype=np.uint8)  # column 0: filter type 0 (None)
    rows[:, 1:] = img.reshape(h, w * c)
    idat = zlib.compress(rows.tobytes(), ZLIB_LEVEL)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def write_png(path: PathLike, img: np.ndarray) -> None:
    """Write ``img`` (``uint8 [H, W]`` gray, ``[H, W, 2|3|4]`` gray+alpha/RGB/RGBA) atomically."""
    atomic_write_bytes(path, encode_png(img))


def image_grid(images: np.ndarray, ncol: int, pad: int = 1, pad_value: int = 0) -> np.ndarray:
    """Tile ``images: uint8 [N, C, H, W]`` (C in 1, 3, 4) into one picture, row by row.

    ``ncol`` images per row (fewer if N < ncol), ``pad`` pixels of ``pad_value``
    between and around the tiles; empty cells of the last row are ``pad_value``.
    Returns ``uint8 [H', W']`` for C = 1, else ``uint8 [H', W', C]``, with
    H' = rows * (H + pad) + pad and W' = cols * (W + pad) + pad.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise BadInputError(
            f"image_grid needs uint8 images [N, C, H, W] with C in 1, 3, 4 "
            f"(got {images.dtype} {images.shape}); convert them first"
        )
    n, c, h, w = images.shape
    if n == 0 or ncol < 1 or pad < 0 or not 0 <= pad_value <= 255:
        raise BadInputError(
            f"image_grid needs N >= 1 images, ncol >= 1, pad >= 0 and pad_value in 0..255 "
            f"(got N={n}, ncol={ncol}, pad={pad}, pad_value={pad_value})"
        )
    cols = min(ncol, n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        top = pad + (i // cols) * (h + pad)
        left = pad + (i % cols) * (w + pad)
        grid[top : top + h, left : left + w] = images[i].transpose(1, 2, 0)
    return grid[:, :, 0] if c == 1 else grid
