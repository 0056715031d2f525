"""Guards for model files from strangers: zip extraction, file references, checksums.

A model package may name files (weights, test tensors, architecture source, ONNX external
data). Each named file must lie inside the package: no absolute paths, no "..", no symbolic
links on the way, no URLs (segrank works offline). Each refusal raises `ModelError` with one
line naming the file and the rule it broke.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import ModelError

# Decompression-bomb limits; generous for real model zoos (largest packages are ~1 GB).
MAX_PACKAGE_BYTES_ENV = "SEGRANK_MAX_PACKAGE_BYTES"
MAX_PACKAGE_BYTES = 3 << 29  # 1.5 GiB unpacked per zip; $SEGRANK_MAX_PACKAGE_BYTES overrides
MAX_ZIP_FILES = 10_000
MAX_ZIP_RATIO = 1000  # uncompressed / compressed, per member

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def cache_dir() -> Path:
    """segrank's cache folder: $SEGRANK_CACHE_DIR, else ~/.cache/segrank."""
    base = os.environ.get("SEGRANK_CACHE_DIR")
    path = Path(base) if base else Path.home() / ".cache" / "segrank"
    path.mkdir(parents=True, exist_ok=True)
    return path


def max_package_bytes() -> int:
    """The most bytes one package zip may unpack to: $SEGRANK_MAX_PACKAGE_BYTES, else 1.5 GiB.

    The variable takes a byte count, optionally with a binary suffix: 8G, 512M, 8GiB.
    """
    text = os.environ.get(MAX_PACKAGE_BYTES_ENV, "").strip()
    if not text:
        return MAX_PACKAGE_BYTES
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", text.lower())
    if not match or int(match.group(1)) <= 0:
        raise ModelError(f"{MAX_PACKAGE_BYTES_ENV}={text!r} is not a positive byte count (e.g. 8000000000, 8G or 8GiB)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _size_limit_error(archive: Path, size: str, limit: int) -> ModelError:
    gib = f" ({limit / (1 << 30):.3g} GiB)" if limit >= 1 << 20 else ""
    return ModelError(
        f"{archive}: unpacks to {size} bytes, which would exceed the limit of {limit} bytes{gib} "
        f"(zip bomb guard; set {MAX_PACKAGE_BYTES_ENV}, e.g. {MAX_PACKAGE_BYTES_ENV}=8G, to raise it)"
    )


_SHA256: dict[tuple, str] = {}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; remembered per (path, size, mtime)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def check_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256; raises when a declared value does not match."""
    actual = sha256_file(path)
    if expected and actual.lower() != str(expected).strip().lower():
        raise ModelError(f"{path}: sha256 mismatch (declared {expected}, file has {actual})")
    return actual


def _relative_parts(name: str, *, what: str, root: Path) -> tuple[str, ...]:
    """The path components of a package-relative name, or a refusal."""
    text = str(name).strip()
    if _URL.match(text):
        raise ModelError(f"{root}: {what} {text!r} is a URL; segrank loads models offline only (download it into the package)")
    if not text:
        raise ModelError(f"{root}: {what} is empty")
    posix = PurePosixPath(text.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[a-zA-Z]:", text):
        raise ModelError(f"{root}: {what} {text!r} is an absolute path; files must lie inside the package")
    if ".." in posix.parts:
        raise ModelError(f"{root}: {what} {text!r} contains '..'; files must lie inside the package")
    return tuple(p for p in posix.parts if p not in ("", "."))


def resolve_inside(root: Path, name: str, *, what: str = "file") -> Path:
    """`root / name` after checking that it stays inside `root` and is a regular file.

    Refuses URLs, absolute paths, "..", any symbolic link between root and the file, and
    missing files.
    """
    root = Path(root)
    parts = _relative_parts(name, what=what, root=root)
    if not parts:
        raise ModelError(f"{root}: {what} {name!r} names the package folder itself, not a file")
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ModelError(f"{path}: {what} is a symbolic link; links are refused inside a model package")
    if not path.exists():
        raise ModelError(f"{path}: {what} named by the description does not exist")
    if not path.is_file():
        raise ModelError(f"{path}: {what} is not a regular file")
    # Belt and braces: the real path must still be under the real root.
    if not path.resolve().is_relative_to(root.resolve()):
        raise ModelError(f"{path}: {what} lies outside the package {root}")
    return path


def safe_extract_zip(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int | None = None,
    max_files: int = MAX_ZIP_FILES,
    max_ratio: float = MAX_ZIP_RATIO,
) -> Path:
    """Extract `archive` into `dest` with guards against traversal, links and bombs.

    Every member name is checked like a package-relative file name; symbolic links and
    device entries are refused (entries without file-type mode bits, as many zip writers
    leave them, are regular files); the member count, the total unpacked size
    (`max_bytes`, default `max_package_bytes()`) and each member's compression ratio are
    bounded, and sizes are enforced while decompressing (the sizes a zip declares can lie).
    On any refusal or error nothing is left in `dest` nor beside it.
    """
    archive = Path(archive)
    if max_bytes is None:
        max_bytes = max_package_bytes()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelError(f"{archive}: not a readable zip file ({err})") from None
    dest = Path(dest)
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zf:
            _extract_members(archive, zf, tmp, max_bytes=max_bytes, max_files=max_files, max_ratio=max_ratio)
    except ModelError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"{archive}: corrupt or unsupported zip file ({err})") from None
    except BaseException:  # KeyboardInterrupt and the like: no half-extracted folder either
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(dest)
    except OSError:  # another process extracted the same archive first
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise ModelError(f"{archive}: cannot extract into {dest}") from None
    return dest


def _extract_members(archive: Path, zf: zipfile.ZipFile, tmp: Path, *, max_bytes: int, max_files: int, max_ratio: float) -> None:
    """Write the members of `zf` under `tmp`, refusing what `safe_extract_zip` refuses."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise ModelError(f"{archive}: {len(infos)} entries exceed the limit of {max_files} (zip bomb guard)")
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise _size_limit_error(archive, str(declared), max_bytes)
    tmp.mkdir(parents=True)
    total = 0
    for info in infos:
        parts = _relative_parts(info.filename, what="zip entry", root=archive)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise ModelError(f"{archive}: zip entry {info.filename!r} is a symbolic link; links are refused")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no file type recorded, a regular file
            raise ModelError(f"{archive}: zip entry {info.filename!r} is not a regular file or folder (mode {kind:#o})")
        if not parts:
            continue
        target = tmp.joinpath(*parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if info.compress_size and info.file_size / info.compress_size > max_ratio:
            raise ModelError(
                f"{archive}: zip entry {info.filename!r} compresses {info.file_size / info.compress_size:.0f}:1, "
                f"over the limit of {max_ratio:.0f}:1 (zip bomb guard)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zf.open(info) as src, open(target, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                written += len(chunk)
                total += len(chunk)
                if written > info.file_size:
                    raise ModelError(
                        f"{archive}: zip entry {info.filename!r} inflates beyond its declared size of {info.file_size} bytes (zip bomb guard)"
                    )
                if total > max_bytes:
                    raise _size_limit_error(archive, f"more than {max_bytes}", max_bytes)
                out.write(chunk)
