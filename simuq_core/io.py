"""Files: Fiji-compatible TIFFs, NPZ/JSON written atomically, the synthetic dataset layout.

Everything is written to a temporary name in the destination folder and renamed into place, so an
interrupted write never leaves a truncated file; :func:`atomic_directory` does the same for a whole
output folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

__all__ = [
    "atomic_directory",
    "atomic_file",
    "directory_digest",
    "read_json",
    "read_tiff",
    "write_json",
    "write_npz",
    "write_ome_tiff",
    "write_text",
    "write_tiff",
]

def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tiff(
    path: str | os.PathLike,
    array: np.ndarray,
    axes: str,
    metadata: dict[str, Any] | None = None,
    resolution: tuple[float, float] | None = None,
) -> None:
    """Write a float32 ImageJ (Fiji) TIFF atomically.

    ``axes`` in ImageJ's TZCYXS order, e.g. ``"ZYX"`` for a frame stack or ``"YX"``;
    ``resolution`` in pixels per micrometre (Fiji then shows the physical pixel size).
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != len(axes):
        raise ValueError(f"{path}: array of shape {array.shape} does not match axes {axes!r}")
    meta = {"axes": axes, **(metadata or {})}
    if resolution is not None:
        meta.setdefault("unit", "um")
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, array, imagej=True, metadata=meta, resolution=resolution)


def write_ome_tiff(path: str | os.PathLike, channels: dict[str, np.ndarray], pixel_nm: float,
                   description: str = "") -> None:
    """Write ``{name: (Y, X) image}`` as one float32 OME-TIFF (axes ``CYX``) atomically, with the
    channel names and the physical pixel size, as Fiji / Bio-Formats and napari read them."""
    names = list(channels)
    data = np.stack([np.asarray(channels[n], np.float32) for n in names])
    um = float(pixel_nm) / 1000.0
    meta = {"axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": um, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": um, "PhysicalSizeYUnit": "µm"}
    if description:
        meta["Description"] = description
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, data, ome=True, metadata=meta, photometric="minisblack",
                         resolution=(1.0 / um, 1.0 / um), resolutionunit="MICROMETER")


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF into a NumPy array; the error names the file when it is not readable."""
    try:
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise OSError(f"{path}: cannot read TIFF ({exc})") from exc


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Compressed ``.npz`` readable by ``np.load``, byte-identical for identical arrays.

    ``np.savez_compressed`` stamps the current time into every zip entry; here entries carry a
    fixed date so the same data always gives the same file (reproducible DVC outputs).
    """
    with atomic_file(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Pretty, key-sorted JSON written atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary name, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; on success swap it into ``final``.

    If the body raises (or the process dies), ``final`` keeps its previous content untouched and
    the temporary folder is removed (or left with a ``.tmp-`` name that the next run cleans).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.tmp-old-{os.getpid()}")
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def directory_digest(root: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root`` (sorted)."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()
