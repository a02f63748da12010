"""The launcher's side of a user's task app: the summary it prints, and which app's task module
it imports."""

from __future__ import annotations

from fedbuff_ops.cli import print_summary

SUMMARY = {
    "stop_reason": "max-server-steps (3) reached",
    "server_steps": 3,
    "updates_accepted": 6,
    "updates_refused": 0,
    "accepted_by_tier": {"real": 6},
    "errors_by_reason": {},
    "staleness_mean": 0.5,
    "staleness_max": 1,
    "wall_seconds": 12.0,
    "run_dir": "runs/x",
}


def test_the_summary_of_a_run_whose_server_holds_no_data_says_so(capsys):
    print_summary({**SUMMARY, "initial_metrics": {}, "final_metrics": {}, "initial_accuracy": None})
    out = capsys.readouterr().out
    assert "evaluation                  none (the server holds no data and federated-eval is off)" in out
    assert "server steps                3" in out


def test_the_summary_shows_what_the_nodes_measured_when_the_server_holds_no_data(capsys):
    summary = {**SUMMARY, "initial_metrics": {}, "final_metrics": {}, "final_federated_metrics": {"accuracy": 0.8}}
    print_summary(summary)
    out = capsys.readouterr().out
    assert "federated accuracy          0.800" in out and "none" not in out.split("server steps")[0]


def test_the_summary_shows_each_metric_the_task_declares(capsys):
    print_summary({**SUMMARY, "initial_metrics": {"hit-rate": 0.25}, "final_metrics": {"hit-rate": 0.75}})
    assert "hit-rate                    0.250 -> 0.750" in capsys.readouterr().out
    print_summary({**SUMMARY, "initial_accuracy": 0.1, "final_accuracy": 0.9})  # an older run's summary
    assert "accuracy                    0.100 -> 0.900" in capsys.readouterr().out


def _app(folder, metric: str):
    folder.mkdir()
    (folder / "helper.py").write_text(f"METRIC = {metric!r}\n")
    (folder / "task.py").write_text(
        "from fedbuff.task import Metric, Task as Base\n"
        "from helper import METRIC\n\n\n"
        "class Task(Base):\n"
        "    metrics = (Metric(METRIC),)\n"
    )
    return folder


def test_each_app_gets_its_own_task_module_though_all_are_named_task(tmp_path):
    import sys

    from fedbuff_ops.app_task import app_task

    first, second = _app(tmp_path / "first", "hit-rate"), _app(tmp_path / "second", "recall")
    sys.modules["task"] = sentinel = type(sys)("task")  # another 'task' the process had imported
    try:
        for _ in range(2):
            assert [m.name for m in app_task(first, {"task": "task:Task"}).metrics] == ["hit-rate"]
            assert [m.name for m in app_task(second, {"task": "task:Task"}).metrics] == ["recall"]
        assert sys.modules["task"] is sentinel  # put back
        assert "helper" not in sys.modules  # the app's own modules are forgotten
    finally:
        sys.modules.pop("task", None)
