"""test/install_check.py, the script CI runs against the runtime-only and the colcon installs, run
here against this venv: it prepares a tiny model and tile set, localizes in-process, starts the
venv's installed localize_node and gets an estimate over DDS; its torch check fails where torch is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("rclpy")

SCRIPT = Path(__file__).with_name("install_check.py")


def run(*args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install_check") / "data"
    proc = run("prepare", str(root))
    assert proc.returncode == 0, proc.stderr
    return root


def test_prepare_writes_a_model_that_encoded_its_tiles(data):
    model = json.loads((data / "model" / "model.json").read_text())
    meta = json.loads((data / "tiles" / "meta.json").read_text())
    assert meta["descriptors"]["model_hash"] == model["model_hash"]
    fix = json.loads((data / "fix.json").read_text())
    assert abs(fix["lat_deg"] - 48.2) < 0.001 and abs(fix["lon_deg"] - 16.37) < 0.001  # the ortho's centre


def test_runtime_localizes_in_process(data):
    proc = run("runtime", str(data))
    assert proc.returncode == 0, proc.stderr
    assert "install_check runtime: OK: estimate (48.1" in proc.stdout


def test_runtime_check_fails_where_torch_is_installed(data):
    proc = run("runtime", str(data), "--expect-no-torch")
    assert proc.returncode == 1
    assert "torch is importable" in proc.stderr


def test_installed_node_answers_over_dds(data):
    node = Path(sys.executable).with_name("localize_node")
    if not node.is_file():
        pytest.skip(f"no installed localize_node beside {sys.executable}")
    proc = run("node", str(data), "--", str(node))
    assert proc.returncode == 0, proc.stderr
    assert "install_check node: OK: crossview/fix (48.1" in proc.stdout


def test_node_check_reports_a_node_that_cannot_start(data, tmp_path):
    node = Path(sys.executable).with_name("localize_node")
    if not node.is_file():
        pytest.skip(f"no installed localize_node beside {sys.executable}")
    broken = tmp_path / "data"
    broken.mkdir()
    for name in ("tiles", "panorama.jpg", "fix.json"):
        (broken / name).symlink_to(data / name)
    (broken / "model").mkdir()
    (broken / "model" / "model.json").write_text("{ not json")
    proc = run("node", str(broken), "--", str(node))
    assert proc.returncode == 1
    assert "the node exited with code 2 before publishing an estimate" in proc.stderr
    assert "node log (tail)" in proc.stderr
