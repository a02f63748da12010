"""Every client's rows of a split, kept on disk: computing them imports ``datasets`` (2 s of CPU).

Each trainer of a run computes the same split (same labels, partitioner, parameters, seed), and
a machine hosting many nodes, or many runs, would pay ``flwr-datasets``' import in every one of
them at start. The file name is a hash of everything that decides the rows, ``flwr-datasets``'
version included, so an entry never answers for other data; an entry that cannot be read, or
does not fit the data, is computed again and replaced. Files are written whole (a temporary
file renamed), so concurrent trainers never read half of one.

``FEDBUFF_CACHE_DIR`` names the folder (default ``$XDG_CACHE_HOME/fedbuff``, else
``~/.cache/fedbuff``); set it empty to keep nothing on disk. A folder that cannot be written
only costs the saving.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "FEDBUFF_CACHE_DIR"
FORMAT = "partitions-v1"  # bump when the file layout changes


def cache_dir() -> Path | None:
    """Where split files live, or ``None`` where ``FEDBUFF_CACHE_DIR`` is set empty."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedbuff"


def split_key(labels: np.ndarray, params: Mapping[str, object], count: int) -> str:
    """A hash of the labels, the partitioner's parameters, the client count and ``flwr-datasets``' version."""
    try:
        library = importlib.metadata.version("flwr-datasets")
    except importlib.metadata.PackageNotFoundError:
        library = "unknown"
    digest = hashlib.sha256(f"{FORMAT} flwr-datasets {library}".encode())
    labels = np.ascontiguousarray(labels)
    digest.update(f" {labels.dtype.str} {labels.shape}".encode())
    digest.update(labels.tobytes())
    digest.update(f" count={count}".encode())
    for name in sorted(params):
        digest.update(f" {name}={params[name]!r}".encode())
    return digest.hexdigest()[:32]


def cached_split(
    labels: np.ndarray, params: Mapping[str, object], count: int, compute: Callable[[], list[np.ndarray]]
) -> list[np.ndarray]:
    """The ``count`` row arrays of the split ``params`` describe: read if kept, else computed and kept.

    ``params`` must name everything besides the labels and ``count`` that decides the rows.
    """
    folder = cache_dir()
    if folder is None:
        return compute()
    path = folder / f"{split_key(labels, params, count)}.npz"
    if path.is_file():
        found = _read(path, count, len(labels))
        if found is not None:
            return found
    rows = compute()
    _write(path, rows)
    return rows


def _read(path: Path, count: int, num_rows: int) -> list[np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as kept:
            rows = [kept[f"arr_{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("partition cache %s is unreadable (%s); computing the split again", path, err)
        return None
    fits = all(
        r.ndim == 1 and r.dtype.kind == "i" and (r.size == 0 or (r.min() >= 0 and r.max() < num_rows)) for r in rows
    )
    if not fits:
        log.warning("partition cache %s does not fit the data; computing the split again", path)
        return None
    return rows


def _write(path: Path, rows: list[np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".npz")
    except OSError as err:
        log.debug("partition cache %s not written: %s", path, err)
        return
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, *rows)  # arr_0, arr_1, … in partition-id order
        os.replace(partial, path)
    except OSError as err:
        Path(partial).unlink(missing_ok=True)
        log.debug("partition cache %s not written: %s", path, err)
