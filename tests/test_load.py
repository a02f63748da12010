"""The load suite's test form (bench/load.py): ten SuperNodes for a minute, nothing lost.

The full form (50 SuperNodes for 10 minutes, BENCHMARKS.md) is a benchmark; this checks the
same books on a federation larger than any other test's: every dispatched task ends as an
update, a refusal or a counted error, or is in flight at the stop; the SuperLink answers its
health check throughout; the exporter's series carry no node label.
"""

from __future__ import annotations

import pytest

from bench.load import load_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_ten_supernodes_for_a_minute_lose_no_task(no_leftover_processes):
    result = load_run(nodes=10, minutes=1.0, concurrency=6)  # under a loaded suite, first replies take ~45 s
    assert result.summary["updates_accepted"] > 0
    assert result.in_flight_at_stop <= 6
    assert result.lost == 0, (result.dispatched, result.replies, result.in_flight_at_stop)
    assert result.samples.health_ok > 0 and result.samples.health_failed == 0
    assert result.samples.series and not result.samples.node_labelled
