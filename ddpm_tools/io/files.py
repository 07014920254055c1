"""Atomic file output and hashing.

Every file the tool writes goes through here: the bytes go to a temporary file in
the destination folder, are flushed and fsync'ed, and the temporary file is then
renamed over the destination (``os.replace`` is atomic on POSIX). A crash leaves
either the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ddpm_tools.errors import BadInputError


def ensure_writable_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) or raise one clear sentence if we cannot."""
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            raise BadInputError(f"cannot create output folder {folder}: {p} is a file; "
                                "choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(
            f"cannot create output folder {folder}: {e.strerror}; choose a writable path"
        ) from None
    if not os.access(folder, os.W_OK):
        raise BadInputError(f"output folder {folder} is not writable; choose a writable path")


def check_output_file(path: Path, what: str) -> None:
    """Before any work: ``path`` can receive a file (it is no folder; its folder exists or
    can be created and is writable), else one sentence naming it."""
    if path.is_dir():
        raise BadInputError(f"{what} {path} is a folder; pass a file path (e.g. "
                            f"{path / ('out' + (path.suffix or '.file'))})")
    ensure_writable_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it over ``path``."""
    path = Path(path)
    check_output_file(path, "output")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], wait: bool = True) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path``, created if missing, for the
    block. ``wait=False`` raises ``BlockingIOError`` at once if another open file holds
    it. The OS releases the lock when its process ends, even when killed."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its header's ``__metadata__`` keys sorted.

    safetensors writes the metadata entries in an arbitrary order (a hash map), so two
    identical runs would give files with different bytes and sha256; sorting them makes
    equal inputs give byte-identical files. The header is JSON after an 8-byte
    little-endian length, padded with spaces to a multiple of 8 bytes.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def atomic_write_safetensors(path: str | os.PathLike[str], data: bytes) -> None:
    """Write the bytes of a safetensors file (``safetensors.*.save``) to ``path``
    atomically, with its metadata in a fixed order (:func:`canonical_safetensors`)."""
    atomic_write_bytes(path, canonical_safetensors(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Read a JSON file, turning every failure into one clear sentence naming ``what``."""
    if str(path) == "":
        raise BadInputError(f"the {what} path is empty; pass the path of a {what} file")
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{what} {path} is a folder, not a file; pass the path of a "
                            f"{what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{what} {path} does not exist; check the path") from None
    except OSError as e:
        raise BadInputError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{what} {path} is not UTF-8 text; regenerate it or fix the "
                            "file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(
            f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg}); "
            "regenerate it or fix the file"
        ) from None
    except (ValueError, RecursionError):  # an integer of > 4300 digits, nesting too deep
        raise BadInputError(f"{what} {path} holds a number too long or nesting too deep to "
                            "read; regenerate it or fix the file") from None


def cache_root() -> Path:
    """The per-user cache of ddpm-tools: ``$DDPM_TOOLS_CACHE`` or ``~/.cache/ddpm-tools``."""
    root = os.environ.get("DDPM_TOOLS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ddpm-tools"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def torch_load_weights_only(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only,
    nothing is unpickled. torch's warning that advises retrying with ``weights_only=False``
    is silenced (that advice is unsafe). Errors are torch's own: each caller words them."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
