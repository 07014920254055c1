"""PNG reader/writer: round trips, every row filter against an independent encoder, files
written by matplotlib / Pillow, refused features, corrupt files, and the image grid."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from extras import import_extra

from ddpm_tools.errors import BadInputError
from ddpm_tools.io.png import image_grid, read_png, read_png_header, write_png

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def _png(
    width: int,
    height: int,
    raw: bytes,
    *,
    depth: int = 8,
    color: int = 0,
    interlace: int = 0,
    extra: bytes = b"",
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    return (
        SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _filtered(img: np.ndarray, kinds: list[int]) -> bytes:
    """Reference encoder written from the PNG spec (Sec. 9): row y uses kinds[y % len]."""
    h = img.shape[0]
    bpp = 1 if img.ndim == 2 else img.shape[2]
    rows = img.reshape(h, -1).astype(int).tolist()
    out = bytearray()
    for y, cur in enumerate(rows):
        prev = rows[y - 1] if y else [0] * len(cur)
        kind = kinds[y % len(kinds)]
        out.append(kind)
        for i, value in enumerate(cur):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            pred = [0, a, b, (a + b) // 2, paeth][kind]
            out.append((value - pred) % 256)
    return bytes(out)


def _image(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """A smooth gradient plus noise (exercises wrap-around in every filter)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (yy * 37 + xx * 11)[:, :, None] + np.arange(c) * 60
    img = (base + rng.integers(0, 40, (h, w, c))) % 256
    return img.astype(np.uint8)[:, :, 0] if c == 1 else img.astype(np.uint8)


@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (4, 6, 2), (6, 4, 3), (3, 9, 4)])
def test_write_read_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    path = tmp_path / "a.png"
    write_png(path, img)
    back = read_png(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, img)
    assert read_png_header(path).shape == shape
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


def test_single_channel_axis_is_written_as_gray(tmp_path: Path) -> None:
    img = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    write_png(tmp_path / "g.png", img)
    np.testing.assert_array_equal(read_png(tmp_path / "g.png"), img[:, :, 0])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("kinds", [[0], [1], [2], [3], [4], [4, 3, 2, 1, 0]])
def test_every_filter_decodes(tmp_path: Path, channels: int, kinds: list[int]) -> None:
    img = _image(np.random.default_rng(channels), 6, 9, channels)
    path = tmp_path / "f.png"
    path.write_bytes(_png(9, 6, _filtered(img, kinds), color=COLOR_TYPE[channels]))
    np.testing.assert_array_equal(read_png(path), img)


def _filter_types(data: bytes, height: int, stride: int) -> set[int]:
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return {raw[y * (stride + 1)] for y in range(height)}


def test_reads_matplotlib_png(tmp_path: Path) -> None:
    plt = import_extra("matplotlib.pyplot", "plot")
    img = _image(np.random.default_rng(1), 40, 50, 3)
    path = tmp_path / "mpl.png"
    plt.imsave(path, img)
    # the independent encoder used real filters, so this checks more than filter 0
    assert _filter_types(path.read_bytes(), 40, 50 * 4) - {0}
    back = read_png(path)
    assert back.shape == (40, 50, 4)  # imsave writes RGBA
    np.testing.assert_array_equal(back[:, :, :3], img)
    assert (back[:, :, 3] == 255).all()


@pytest.mark.parametrize("mode,channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)])
def test_reads_pillow_png(tmp_path: Path, mode: str, channels: int) -> None:
    image_mod = import_extra("PIL.Image", "plot")  # pillow comes with matplotlib
    img = _image(np.random.default_rng(2), 33, 17, channels)
    buf = io.BytesIO()
    image_mod.fromarray(img, mode=mode).save(buf, format="PNG")
    (tmp_path / "p.png").write_bytes(buf.getvalue())
    np.testing.assert_array_equal(read_png(tmp_path / "p.png"), img)


@pytest.mark.parametrize(
    "kwargs,feature",
    [
        ({"depth": 16, "color": 0}, "16-bit"),
        ({"depth": 8, "color": 3}, "palette"),
        ({"depth": 8, "color": 2, "interlace": 1}, "interlaced"),
        ({"depth": 4, "color": 0}, "4-bit"),
    ],
)
def test_unsupported_features_are_named(tmp_path: Path, kwargs: dict, feature: str) -> None:
    path = tmp_path / "odd.png"
    path.write_bytes(_png(2, 2, b"\x00" * 64, **kwargs))
    for reader in (read_png, read_png_header):
        with pytest.raises(BadInputError, match=feature) as err:
            reader(path)
        assert str(path) in str(err.value)


def test_ancillary_chunks_ignored_unknown_critical_refused(tmp_path: Path) -> None:
    raw = _filtered(np.arange(6, dtype=np.uint8).reshape(2, 3), [1])
    (tmp_path / "text.png").write_bytes(_png(3, 2, raw, extra=_chunk(b"tEXt", b"k\x00v")))
    np.testing.assert_array_equal(read_png(tmp_path / "text.png"), np.arange(6).reshape(2, 3))
    (tmp_path / "crit.png").write_bytes(_png(3, 2, raw, extra=_chunk(b"ABCD", b"")))
    with pytest.raises(BadInputError, match="critical chunk"):
        read_png(tmp_path / "crit.png")


def test_corrupt_files_are_refused(tmp_path: Path) -> None:
    good = _png(3, 2, _filtered(np.zeros((2, 3), np.uint8), [0]))
    cases = {
        "missing.png": None,
        "text.png": b"hello, not an image",
        "crc.png": good[:-20] + bytes([good[-20] ^ 0xFF]) + good[-19:],
        "cut.png": good[: len(good) - 30],
        "short.png": _png(3, 2, b"\x00\x01\x02"),
        "badfilter.png": _png(3, 2, b"\x07" + b"\x00" * 3 + b"\x00" * 4),
        "noiend.png": good[:-12],
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(BadInputError) as err:
            read_png(path)
        assert name in str(err.value), name


def test_write_png_refuses_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.float32))
    with pytest.raises(BadInputError, match="shape"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(BadInputError, match="shape"):
        write_png(tmp_path / "x.png", np.zeros((0, 2), np.uint8))
    assert not list(tmp_path.iterdir())


def test_image_grid_layout() -> None:
    images = np.stack([np.full((1, 2, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = image_grid(images, ncol=2, pad=1)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1)  # 3 rows of H=2, 2 cols of W=3, pad 1
    assert (grid[1:3, 1:4] == 10).all() and (grid[1:3, 5:8] == 20).all()
    assert (grid[4:6, 1:4] == 30).all() and (grid[7:9, 1:4] == 50).all()
    assert (grid[7:9, 5:8] == 0).all()  # empty last cell
    assert (grid[0] == 0).all() and (grid[:, 4] == 0).all()  # padding
    assert grid.sum() == 2 * 3 * (10 + 20 + 30 + 40 + 50)


def test_image_grid_rgb_and_few_images() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (2, 3, 4, 5)).astype(np.uint8)
    grid = image_grid(rgb, ncol=8, pad=0)
    assert grid.shape == (4, 10, 3)  # only as many columns as images
    np.testing.assert_array_equal(grid[:, 5:], rgb[1].transpose(1, 2, 0))
    with pytest.raises(BadInputError):
        image_grid(rgb.astype(np.float32), ncol=2)
    with pytest.raises(BadInputError):
        image_grid(rgb, ncol=0)
