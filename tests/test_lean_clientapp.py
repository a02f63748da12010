"""The launcher's lean ``flwr-clientapp``: Flower's own command, without the SuperNode daemon's imports."""

from __future__ import annotations

import subprocess
import sys

from fedbuff_ops.launcher import LEAN_CLIENTAPP_ENV, find_binary, lean_clientapp_dir


def test_the_lean_command_is_flowers_own_parser(tmp_path):
    (folder,) = lean_clientapp_dir(tmp_path)
    lean = subprocess.run([f"{folder}/flwr-clientapp", "--help"], capture_output=True, text=True, timeout=60)
    flowers = subprocess.run([find_binary("flwr-clientapp"), "--help"], capture_output=True, text=True, timeout=60)
    assert lean.returncode == flowers.returncode == 0, lean.stderr
    assert lean.stdout.replace("fedbuff", "") == flowers.stdout.replace("fedbuff", "")
    assert "--runtime-api-address" in lean.stdout and "--token" in lean.stdout


def test_it_leaves_out_the_supernode_daemon():
    probe = (
        "import sys; from fedbuff_ops.lean_clientapp import flwr_clientapp_command; flwr_clientapp_command(); "
        "print(sorted(m for m in ('flwr.supernode.cli', 'sqlalchemy', 'alembic') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "[]"


def test_it_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(LEAN_CLIENTAPP_ENV, "0")
    assert lean_clientapp_dir(tmp_path) == []
    assert not (tmp_path / "lean-bin").exists()
