"""crossview-demo at a tiny size end to end (dataset, training, export, city, tiles, drive, replay through the
real localize_node), then a second run that must reuse every stage; the stage bookkeeping on its own; and
bad arguments (exit code 2, nothing written)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossview_training import demo

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
pytest.importorskip("rclpy")
pytest.importorskip("filterpy")
pytest.importorskip("matplotlib")

# Two 300 m cities of 16 panoramas at 128x64, 128 px tiles, a 64x128 model trained for 2 short epochs,
# a 300 m held-out city and a 10 s walk (21 panoramas) replayed at 4x.
TINY = ["--preset", "cpu-small", "--cities", "2", "--city-m", "300", "--gsd-m", "0.5", "--panoramas", "16", "--pano-height-px", "64",
        "--sat-px", "128", "--train-minutes", "0.2", "--train-set", "ground_size=[64,128]", "aerial_size=[64,64]",
        "batch_size=8", "epochs=2", "val_panoramas=4", "--test-city-m", "300", "--drive-s", "10",
        "--replay-rate", "4", "--calibration-walks", "2", "--no-progress"]


def run_demo(work: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "crossview_training.demo", "--work", str(work), *TINY, *extra],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=600)
    return done, time.monotonic() - started


def table_of(stdout: str) -> list[str]:
    """The printed summary from its first line to the heading line (the stage times differ between runs)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("crossview-demo: "))
    end = next(i for i, line in enumerate(lines) if line.startswith("heading: "))
    return lines[start:end + 1]


def summary_of(work: Path) -> dict:
    return json.loads((work / "cpu-small" / "demo_summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The demo run twice in the same work folder: each run's process, seconds and demo_summary.json."""
    work = tmp_path_factory.mktemp("demo") / "work"
    first, first_s = run_demo(work)
    assert first.returncode == 0, first.stderr[-6000:]
    first_summary = summary_of(work)
    second, second_s = run_demo(work)
    assert second.returncode == 0, second.stderr[-6000:]
    return {"work": work, "first": first, "first_s": first_s, "first_summary": first_summary,
            "second": second, "second_s": second_s, "second_summary": summary_of(work)}


def test_first_run_builds_every_stage_and_summarises_the_replay(runs):
    first, first_s, work, summary = runs["first"], runs["first_s"], runs["work"], runs["first_summary"]
    summary_path = work / "cpu-small" / "demo_summary.json"
    assert [s["name"] for s in summary["stages"]] == list(demo.STAGES)
    assert all(s["status"] == "built" and s["seconds"] > 0 for s in summary["stages"])
    for stage in demo.STAGES:
        assert f"{stage}: built" in first.stderr
    assert first_s < 300  # the tiny sizes keep it short (about a minute on a shared 2-core machine)

    # Every figure comes from the replay's summary.json, unchanged.
    replay = json.loads(Path(summary["replay_summary"]).read_text())
    assert summary["replay_summary"] == str(work / "cpu-small" / "replay" / "summary.json")
    assert Path(summary["report"]).is_file() and Path(summary["report"]).name == "report.md"
    assert summary["frames"] == replay["frames"] == 21  # 10 s at 2 Hz
    assert summary["published"] == replay["published"]
    assert summary["published_share"] == replay["published_share"]
    assert set(summary["tracks"]) == {"gnss", "crossview", "fused", "fused_with_gnss"}
    for key, track in summary["tracks"].items():
        stats = replay["errors"][key]
        assert track["median_m"] == stats["median_m"] and track["p95_m"] == stats["p95_m"]
        assert track["count"] == stats["count"]
        assert math.isclose(track["share_pct"], 100.0 * stats["count"] / replay["frames"])
    assert summary["tracks"]["gnss"]["count"] > 0 and summary["tracks"]["gnss"]["median_m"] > 0
    assert summary["heading"] == replay["heading"]
    assert summary["latency_ms"] == replay["latency_ms"]
    assert summary["frames_dropped"] == replay["node_counters"]["frames_dropped"]
    assert summary["frames_received_by_node"] == replay["node_counters"]["frames_received"]
    assert summary["model"]["model_hash"].startswith("sha256:")
    assert summary["summary_path"] == str(summary_path)

    # The printed table carries the same numbers.
    out = first.stdout
    assert "track" in out and "median m" in out and "p95 m" in out and "raw GNSS" in out and "fused" in out
    gnss = summary["tracks"]["gnss"]
    assert f"{gnss['median_m']:.1f}" in out and f"{gnss['p95_m']:.1f}" in out
    assert f"report: {summary['report']}" in out
    for stage in demo.STAGES:
        assert any(line.split()[:2] == [stage, "built"] for line in out.splitlines())

    # What the stages wrote.
    assert (work / "dataset" / "dataset.json").is_file()
    assert (work / "cpu-small" / "model" / "model.json").is_file()
    assert (work / "city" / "orthophoto.tif").is_file()
    assert (work / "drive" / "metadata.yaml").is_file()
    # the covariance the replay's node loaded was calibrated on the validation walk, not on the drive
    calibration = json.loads((work / "cpu-small" / "model" / "covariance.json").read_text())
    assert calibration["params"]["calibrated"] and calibration["fit"]["samples"] > 21
    assert "covariance calibrated on" in (work / "cpu-small" / "calibration" / "calibration.txt").read_text()
    # on the validation walks pooled, seeds 1 and 2 (--calibration-walks 2): 2 x 30 s at 2 Hz
    for seed in (1, 2):
        assert (work / "cpu-small" / "calibration" / "validation_drives" / f"seed{seed}" / "metadata.yaml").is_file()
    assert calibration["fit"]["samples"] <= 2 * 61
    assert "frames 122, published" in (work / "cpu-small" / "calibration" / "calibration.txt").read_text()
    city = json.loads((work / "city" / "city.json").read_text())
    assert city["city"]["config"]["seed"] == 100 and 100 not in (1, 2)  # held out: training cities are seeds 1, 2


def test_second_run_reuses_every_stage_and_is_much_faster(runs):
    first, first_s, second, second_s = runs["first"], runs["first_s"], runs["second"], runs["second_s"]
    summary = runs["second_summary"]
    assert [s["status"] for s in summary["stages"]] == ["reused"] * len(demo.STAGES)
    for stage in demo.STAGES:
        assert f"{stage}: reused" in second.stderr
        assert f"{stage}: built" not in second.stderr
    assert "crossview_train" not in second.stderr  # no training step ran
    assert second_s < 0.5 * first_s, (first_s, second_s)
    # The same replay, so the same figures.
    assert {k: v for k, v in summary.items() if k not in ("stages", "total_s")} == \
        {k: v for k, v in runs["first_summary"].items() if k not in ("stages", "total_s")}
    assert table_of(first.stdout) == table_of(second.stdout)


def test_changed_replay_setting_rebuilds_only_the_replay(runs):
    work = runs["work"]
    done, _ = run_demo(work, "--no-heading")
    assert done.returncode == 0, done.stderr[-6000:]
    summary = summary_of(work)
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status == {**{s: "reused" for s in demo.STAGES}, "replay": "built"}
    assert summary["heading"]["count"] == 0 and "heading: none published" in done.stdout


# --------------------------------------------------------------------------- stage bookkeeping


def test_stages_reuse_resume_and_rebuild(tmp_path, caplog):
    """Records decide: same params + output checks out = reused; changed params = output wiped and rebuilt;
    a "running" record (killed run) = resumed without wiping; a failing check or overwrite = rebuilt."""
    work = tmp_path / "work"
    out = work / "thing"
    calls: list[str] = []

    def build(tag: str):
        def make() -> dict:
            calls.append(tag)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{tag}.txt").write_text(tag)
            return {"tag": tag}
        return make

    def check(info: dict) -> bool:
        return (out / f"{info['tag']}.txt").is_file()

    stages = demo.Stages(work, overwrite=False)
    first = stages.run("city", out, {"size": 1}, build("a"), check)
    assert first.status == "built" and calls == ["a"]
    again = demo.Stages(work, overwrite=False).run("city", out, {"size": 1}, build("b"), check)
    assert again.status == "reused" and calls == ["a"] and again.fingerprint == first.fingerprint

    changed = demo.Stages(work, overwrite=False).run("city", out, {"size": 2}, build("c"), check)
    assert changed.status == "built" and calls == ["a", "c"]
    assert not (out / "a.txt").exists()  # the old output was wiped
    assert changed.fingerprint != first.fingerprint

    record = work / "stages" / "city.json"
    doc = json.loads(record.read_text())
    doc["status"] = "running"  # as a killed run leaves it
    record.write_text(json.dumps(doc))
    resumed = demo.Stages(work, overwrite=False).run("city", out, {"size": 2}, build("d"), check)
    assert resumed.status == "built" and (out / "c.txt").exists() and (out / "d.txt").exists()  # kept, resumed

    (out / "d.txt").unlink()  # the recorded output is gone: rebuilt
    rebuilt = demo.Stages(work, overwrite=False).run("city", out, {"size": 2}, build("e"), check)
    assert rebuilt.status == "built" and calls[-1] == "e"

    forced = demo.Stages(work, overwrite=True).run("city", out, {"size": 2}, build("f"), check)
    assert forced.status == "built" and calls[-1] == "f"

    scoped = demo.Stages(work, overwrite=False).run("train", work / "p" / "train", {"x": 1}, build("g"), check,
                                                    scope="p")
    assert scoped.status == "built" and (work / "stages" / "p" / "train.json").is_file()

    stale = work / ".thing.abc.partial"  # a killed atomic writer's leftovers are cleared before a build
    stale.mkdir()
    demo.Stages(work, overwrite=True).run("city", out, {"size": 2}, build("h"), check)
    assert not stale.exists()


def test_stages_never_delete_outside_the_work_folder(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    with pytest.raises(demo.DemoError, match="outside the work folder"):
        demo.Stages(tmp_path / "work", overwrite=False).run("city", outside, {}, lambda: {}, lambda info: True)
    assert outside.is_dir()


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("argv, message", [
    (["--cities", "7"], "--cities must be 2..4"),
    (["--test-seed", "1"], "--test-seed 1 is the seed of a training city"),
    (["--train-minutes", "0"], "--train-minutes must be > 0"),
    (["--replay-rate", "-1"], "--replay-rate must be > 0"),
    (["--city-m", "100"], "--city-m must be a number >= 150"),
    (["--pano-height-px", "33"], "--pano-height-px must be an even number"),
    (["--preset", "no-such-preset"], "unknown --preset 'no-such-preset'; valid presets: "),
    (["--train-set", "no_such_key=1"], "--train-set"),
    (["--train-set", "epochs=0"], "--train-set"),
    (["--params-file", "/nonexistent/localize.yaml"], "--params-file /nonexistent/localize.yaml not found"),
    (["--calibration-walks", "0"], "--calibration-walks must be 1..20, got 0"),
    (["--mode", "fly"], None),  # argparse's own message
    (["--drive-s", "abc"], None),
])
def test_bad_arguments_exit_2_with_a_message_and_write_nothing(tmp_path, capsys, argv, message):
    work = tmp_path / "work"
    assert demo.main(["--work", str(work), *argv]) == 2
    err = capsys.readouterr().err
    assert "error" in err and (message is None or message in err), err
    assert not work.exists()


def test_help_explains_the_stages(capsys):
    assert demo.main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("dataset", "train", "export", "tiles", "encode", "drive", "calibrate", "replay", "--work", "--preset",
                 "--train-minutes", "Reuse", "Exit codes"):
        assert word in out


def test_the_console_script_names_the_extras_when_torch_is_missing(tmp_path):
    """crossview-demo on a runtime-only install: one line saying what to install, exit 2, no traceback."""
    hide_torch = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from crossview_training.demo_cli import main\n"
        f"sys.exit(main(['--work', {str(tmp_path / 'work')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", hide_torch], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "No module named 'torch'" in done.stderr and "pip install '.[ros,train,replay]'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "work").exists()
