"""Crash-safe server checkpoints: what a restarted ServerApp needs to continue a run.

A checkpoint is one ``.npz`` file holding the global model (``arr_0``…), its ``version``,
the server optimizer's state (``optimizer.<key>``), a JSON ``meta`` entry (run counters,
evaluations so far, the user-level DP accountant, the strategy name) and ``sha256``, a
digest of every other entry. It is written to a temporary file, fsynced and moved into
place with ``os.replace``, so a crash mid-write leaves the previous file whole; the one it
replaces is kept as ``checkpoint.prev.npz``. :func:`load_latest` refuses a file whose
digest does not match (corrupted, truncated) and falls back to the previous one.

Not in a checkpoint, on purpose: a partly filled buffer (holding individual updates
across a crash would mean storing them, and under secure aggregation their masks are
single-use) and the tasks in flight (the restarted loop only knows the ids it pushed
itself, so their replies are never pulled). Both are counted in ``meta`` so a resume
says what it dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server_app.loop import AsyncLoop, Evaluation
from server_app.stats import RunStats

log = logging.getLogger(__name__)

FORMAT = 1
LATEST = "checkpoint.npz"
PREVIOUS = "checkpoint.prev.npz"
_OPTIMIZER = "optimizer."
_DIGEST = "sha256"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or fails its checksum; the message names the file."""


@dataclass
class ServerState:
    """Everything a checkpoint restores. ``in_flight`` and ``buffer_fill`` are what a
    resume from it drops (tasks never pulled again, updates accepted but not applied)."""

    model: list[np.ndarray]
    version: int
    strategy: str
    optimizer: dict[str, Any] = field(default_factory=dict)
    accountant: dict[str, Any] | None = None
    stats: RunStats = field(default_factory=RunStats)
    evaluations: list[Evaluation] = field(default_factory=list)
    in_flight: int = 0
    buffer_fill: int = 0


def save(path: Path, state: ServerState, previous: Path | None = None) -> None:
    """Write ``state`` to ``path`` atomically: temp file, fsync, ``os.replace``, fsync the folder.

    With ``previous``, the file being replaced moves there, once the new one is on disk.
    """
    entries = _entries(state)
    entries[_DIGEST] = np.frombuffer(_digest(entries), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as file:
            np.savez(file, **entries)  # type: ignore[arg-type]
            file.flush()
            os.fsync(file.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def load(path: Path) -> ServerState:
    """Read and verify one checkpoint; :class:`CheckpointError` if it is bad in any way."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted?): {err}") from err
    digest = entries.pop(_DIGEST, None)
    if digest is None or digest.tobytes() != _digest(entries):
        raise CheckpointError(f"checkpoint {path} fails its SHA-256 check: corrupted or incomplete")
    try:
        return _state(entries)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has an unexpected layout: {err}") from err


def load_latest(location: Path) -> tuple[ServerState, Path]:
    """The newest good checkpoint of a run folder (or of the folder a checkpoint file is in).

    Tries ``checkpoint.npz`` then ``checkpoint.prev.npz`` (a file name given is tried
    first); logs which one it used and why it skipped the other. Raises
    :class:`CheckpointError` naming every file tried when none is good.
    """
    folder = location.parent if location.suffix == ".npz" else location
    candidates = list(
        dict.fromkeys(
            [
                *([location] if location.suffix == ".npz" else []),
                folder / LATEST,
                folder / PREVIOUS,
            ]
        )
    )
    problems = []
    for path in candidates:
        try:
            state = load(path)
        except CheckpointError as err:
            log.warning("%s", err)
            problems.append(str(err))
            continue
        log.info("resuming from %s (version %d)", path, state.version)
        return state, path
    raise CheckpointError("no usable checkpoint: " + "; ".join(problems))


class CheckpointWriter:
    """Saves a run's checkpoints in its folder, keeping the last good one as the previous.

    When a new ``checkpoint.npz`` is safely on disk, the one it replaces becomes
    ``checkpoint.prev.npz``, but only if it is known good (written by this writer, or verified
    once): a corrupted newest file never pushes out the good previous one.
    """

    def __init__(self, run_dir: Path) -> None:
        self.latest = run_dir / LATEST
        self.previous = run_dir / PREVIOUS
        self._latest_good: bool | None = None  # unknown until checked or written

    def write(self, state: ServerState) -> Path:
        """Save ``state`` as the newest checkpoint; returns its path."""
        if self._latest_good is None:
            self._latest_good = self._verifies(self.latest)
        save(self.latest, state, self.previous if self._latest_good else None)
        self._latest_good = True
        return self.latest

    @staticmethod
    def _verifies(path: Path) -> bool:
        if not path.exists():
            return False
        try:
            load(path)
        except CheckpointError:
            return False
        return True


def snapshot(loop: AsyncLoop, strategy: str, accountant: dict[str, Any] | None) -> ServerState:
    """The state of a running loop, as a checkpoint holds it."""
    state = loop.strategy.state_dict()
    return ServerState(
        model=state["model"],
        version=state["version"],
        strategy=strategy,
        optimizer=dict(state.get("optimizer") or {}),
        accountant=accountant,
        stats=loop.stats,
        evaluations=loop.evaluations,
        in_flight=len(loop.tasks),
        buffer_fill=loop.strategy.buffer_fill,
    )


# -- encoding ----------------------------------------------------------------------------


def _entries(state: ServerState) -> dict[str, np.ndarray]:
    entries = {f"arr_{i}": np.asarray(a) for i, a in enumerate(state.model)}
    entries["version"] = np.asarray(state.version, dtype=np.int64)
    entries.update({_OPTIMIZER + k: np.asarray(v) for k, v in state.optimizer.items()})
    meta = {
        "format": FORMAT,
        "strategy": state.strategy,
        "layers": len(state.model),
        "accountant": state.accountant,
        "stats": _stats_dict(state.stats),
        "evaluations": [[e.version, dict(e.metrics), dict(e.federated)] for e in state.evaluations],
        "in_flight": state.in_flight,
        "buffer_fill": state.buffer_fill,
    }
    entries["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return entries


def _evaluation(entry: list) -> Evaluation:
    """``[version, {metric: value}, {federated metric: value}]``; checkpoints written before
    tasks had metrics hold ``[version, loss, accuracy]``."""
    if not isinstance(entry[1], dict):
        return Evaluation(int(entry[0]), {"loss": float(entry[1]), "accuracy": float(entry[2])})
    version, metrics, federated = entry
    return Evaluation(
        int(version),
        {str(k): float(v) for k, v in metrics.items()},
        federated={str(k): float(v) for k, v in federated.items()},
    )


def _state(entries: dict[str, np.ndarray]) -> ServerState:
    meta = json.loads(entries["meta"].tobytes())
    if meta["format"] != FORMAT:
        raise ValueError(f"format {meta['format']}, this server reads {FORMAT}")
    optimizer: dict[str, np.ndarray | int] = {
        k[len(_OPTIMIZER) :]: v for k, v in entries.items() if k.startswith(_OPTIMIZER)
    }
    if "steps" in optimizer:
        optimizer["steps"] = int(optimizer["steps"])
    return ServerState(
        model=[entries[f"arr_{i}"] for i in range(meta["layers"])],
        version=int(entries["version"]),
        strategy=meta["strategy"],
        optimizer=optimizer,
        accountant=meta["accountant"],
        stats=_stats_from(meta["stats"]),
        evaluations=[_evaluation(entry) for entry in meta["evaluations"]],
        in_flight=int(meta["in_flight"]),
        buffer_fill=int(meta["buffer_fill"]),
    )


def _digest(entries: dict[str, np.ndarray]) -> bytes:
    """SHA-256 over every entry's name, dtype, shape and bytes, in name order."""
    sha = hashlib.sha256()
    for name in sorted(entries):
        array = np.asarray(entries[name])
        sha.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.tobytes(order="C"))
    return sha.digest()


_COUNTERS = (
    "outcomes",
    "rejected",
    "errors",
    "accepted_by_tier",
    "staleness",
    "dropped_fields",
    "clipped",
    "refused_steps",
)


def _stats_dict(stats: RunStats) -> dict[str, Any]:
    counters = {name: {str(k): v for k, v in getattr(stats, name).items()} for name in _COUNTERS}
    return {
        "dispatched": stats.dispatched,
        "round_trip_sum": stats.round_trip_sum,
        "replies": stats.replies,
        **counters,
    }


def _stats_from(data: dict[str, Any]) -> RunStats:
    counters = {name: Counter(data.get(name, {})) for name in _COUNTERS}  # newer counters: absent before
    counters["staleness"] = Counter({int(k): v for k, v in data["staleness"].items()})
    return RunStats(
        dispatched=int(data["dispatched"]),
        round_trip_sum=float(data["round_trip_sum"]),
        replies=int(data["replies"]),
        **counters,
    )


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
