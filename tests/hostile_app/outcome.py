"""What a run with the hostile ClientApp beside honest nodes must show, from its summary and events.

Shared by the in-process rehearsal (tests/test_hostile_client.py) and the real federation
(tests/test_e2e_hostile.py), so both hold the server to the same account of every lie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The run config both use: linear example weights (the reproduction's), a typical client's
# count as reference (3 digits partitions hold ~480 rows), and no back-off, so that the liar
# keeps getting tasks and walks through every lie in a short run.
HOSTILE_RUN_CONFIG = {
    "example-weight": "linear",
    "example-reference": 480.0,
    "max-example-weight": 2.0,
    "buffer-size": 2,
    "concurrency": 4,
    "max-server-steps": 20,
    "eval-every": 5,
    "error-backoff-seconds": 0.0,
}


def check_every_lie_was_refused_clipped_or_dropped(
    summary: Mapping[str, object], events: Sequence[Mapping[str, object]]
) -> int:
    """Assert the account of every lie; return the liar's node id."""
    rejected = summary["rejected_by_reason"]
    for reason in ("num-examples", "missing-field", "shape", "encoding"):
        assert rejected.get(reason, 0) >= 1, f"no reply refused as {reason}: {rejected}"  # type: ignore[union-attr]
    dropped = summary["dropped_fields"]
    for field in ("train-seconds", "train-loss", "dp-epsilon", "device"):
        assert dropped.get(field, 0) >= 1, f"{field} never dropped: {dropped}"  # type: ignore[union-attr]
    assert summary["clipped"].get("example-weight", 0) >= 2  # type: ignore[union-attr]
    assert summary["refused_steps"].get("step-norm", 0) >= 1  # type: ignore[union-attr]
    (liar,) = {e["node"] for e in events if e["event"] == "invalid" and "node" in e}  # only the liar was refused
    clipped = {e["node"] for e in events if e["event"] == "update" and e.get("weight_clipped")}
    assert clipped == {liar}, "an honest node's weight was clipped"
    honest = [e for e in events if e["event"] == "update" and e["node"] != liar and e["outcome"] == "accepted"]
    assert honest and not any(e.get("dropped_fields") for e in honest)
    assert any(e["event"] == "step-refused" and e["reason"] == "step-norm" for e in events)
    return int(liar)  # type: ignore[arg-type]
