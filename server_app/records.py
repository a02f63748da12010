"""The run folder: exact config, metric history (JSON lines), summary.

Checkpoints are written into the same folder by :mod:`server_app.checkpoint`.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from server_app.events import EventKind


def default_run_dir(root: str | Path = "runs") -> Path:
    """``runs/<UTC timestamp>``, unique to the second."""
    return Path(root) / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


class RunRecorder:
    """Writes one run's outputs under ``run_dir``; files are replaced atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        # open for the run's life, flushed per event, closed by close()
        self._history: IO[str] = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write_config(self, config: dict[str, object]) -> None:
        """The exact settings the run used."""
        self._write_json("config.json", config)

    def event(self, kind: EventKind, **fields: object) -> None:
        """Append one loop event (``server_app.events``) to ``metrics.jsonl``, flushed at once."""
        self._history.write(json.dumps({"event": kind, **fields}) + "\n")
        self._history.flush()

    def write_summary(self, summary: dict[str, object]) -> None:
        self._write_json("summary.json", summary)

    def close(self) -> None:
        self._history.close()

    def _write_json(self, name: str, data: dict[str, object]) -> None:
        tmp = self.run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.run_dir / name)
