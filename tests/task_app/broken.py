"""A task module whose import fails (tests/test_e2e_tasks.py: refused before anything starts)."""

from __future__ import annotations

import fedbuff_no_such_module  # noqa: F401

Task = None
