"""Checks of an installed crossview_ros that CI runs outside pytest, each against a given install.

    python test/install_check.py prepare DIR
        (an install with the train extra) a tiny exported model, a tile set it encoded, a
        panorama and a fix on the tiles, written to DIR.
    python test/install_check.py runtime DIR [--expect-no-torch]
        the runtime localizes DIR's panorama in-process (and, with --expect-no-torch, proves that
        torch cannot be imported in this install, so nothing of the runtime needed it).
    python test/install_check.py node DIR -- NODE_COMMAND...
        starts NODE_COMMAND (an installed localize_node: the console script of a venv, or the
        colcon install tree's lib/crossview_ros/localize_node) on DIR's model and tiles, publishes
        the fix and the panorama over DDS (loopback, a random domain) until one crossview/fix
        arrives, then stops the node with SIGINT and expects exit code 0.

Exit code 0 when the check holds, 1 with one line saying what failed. test/test_install.py runs
the same steps in the development venv, so a broken script fails the tests before it fails CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

TILE_M = 40.0  # tile side of the tiny model and its tile set
GROUND = (64, 128)  # the tiny model's panorama input
AERIAL = (64, 64)
FIX_SIGMA_M = 20.0
START_TIMEOUT_S = 90.0  # the node loads its model and tiles, then DDS discovery
STOP_TIMEOUT_S = 20.0
NODE_PARAMS = ("engine:=onnxruntime", "engine_threads:=1", "max_mahalanobis:=1000000.0", "log_throttle_s:=0.0")


class CheckFailed(Exception):
    """The install does not do what the check expects; the message says what."""


def prepare(out: Path) -> dict:
    """Model, tile set, panorama and fix in `out` (needs torch: run it where the train extra is)."""
    import cv2
    import torch

    from crossview_ros import geo
    from crossview_ros.sim.coord_ortho import write_coordinate_geotiff
    from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set
    from crossview_ros.tiles_cli import encode_tile_set
    from crossview_training.export import export_onnx
    from crossview_training.models import create_model

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("small", ground_size=GROUND, aerial_size=AERIAL, dim=32).eval()
    export_onnx(model, out / "model", tile_size_m=TILE_M)
    tif = write_coordinate_geotiff(out / "ortho.tif", crs="EPSG:3857", gsd_m=1.0, centre_lat_deg=48.2,
                                   centre_lon_deg=16.37, size_m=140.0, kind="rgb")
    tiles = build_tile_set([tif], out / "tiles", TilingConfig(tile_size_m=TILE_M, tile_px=64), progress=False)
    encode_tile_set(tiles, out / "model", engine="onnxruntime", threads=1, progress=False)
    ts = TileSet.open(tiles)
    lat, lon = geo.utm_to_latlon(float(ts.easting_m.mean()), float(ts.northing_m.mean()), ts.zone)
    rng = np.random.default_rng(1)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (128, 256, 3), dtype=np.uint8), (7, 7), 2)
    ok, jpeg = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise CheckFailed("JPEG encoding of the test panorama failed")
    (out / "panorama.jpg").write_bytes(jpeg.tobytes())
    fix = {"lat_deg": float(lat), "lon_deg": float(lon), "sigma_m": FIX_SIGMA_M}
    (out / "fix.json").write_text(json.dumps(fix))
    return fix


def _artefacts(root: Path) -> tuple[Path, Path, bytes, dict]:
    needed = [root / "model" / "model.json", root / "tiles", root / "panorama.jpg", root / "fix.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise CheckFailed(f"missing {', '.join(missing)}: run `install_check.py prepare {root}` first")
    return root / "model", root / "tiles", (root / "panorama.jpg").read_bytes(), json.loads(
        (root / "fix.json").read_text())


def runtime(root: Path, expect_no_torch: bool) -> str:
    """Localize the prepared panorama in-process; optionally prove torch is absent."""
    if expect_no_torch:
        try:
            import torch  # noqa: F401
        except ModuleNotFoundError:
            pass
        else:
            raise CheckFailed(f"torch is importable in this install ({sys.prefix}): it is not runtime-only")
    import crossview_ros.nodes.localize_node  # noqa: F401  the node's module, rclpy and messages included
    from crossview_ros.estimate import Fix
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    model, tiles, jpeg, fix = _artefacts(root)
    config = LocalizerConfig(tile_set=str(tiles), model=str(model), engine="onnxruntime", engine_threads=1,
                             max_mahalanobis=1e6)
    now = time.time()
    est = Localizer(config).localize(jpeg, Fix(fix["lat_deg"], fix["lon_deg"], now, sigma_m=fix["sigma_m"]), now,
                                     now_s=now)
    if not est.accepted:
        raise CheckFailed(f"the localizer refused the test frame: {est.reason}: {est.message}")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "crossview_training"))
    if leaked:
        raise CheckFailed(f"the runtime imported {', '.join(leaked[:3])}")
    return f"estimate ({est.lat_deg:.7f}, {est.lon_deg:.7f}) from {est.tiles_in_scope} tiles in scope"


def node(root: Path, command: Sequence[str]) -> str:
    """Start the installed node, feed it over DDS until one estimate comes back, stop it."""
    model, tiles, jpeg, fix = _artefacts(root)
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 100)),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    args = ["--ros-args", "-r", "__ns:=/install_check", "-p", f"tile_set:={tiles}", "-p", f"model:={model}"]
    for p in NODE_PARAMS:
        args += ["-p", p]
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen([*command, *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            received = _exchange(proc, jpeg, fix)
        except CheckFailed as exc:
            log.seek(0)
            tail = "\n".join(log.read().splitlines()[-15:])
            raise CheckFailed(f"{exc}\n--- node log (tail) ---\n{tail}") from None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    if code != 0:
        raise CheckFailed(f"the node exited with code {code} after SIGINT (expected 0)")
    return received


def _exchange(proc: subprocess.Popen, jpeg: bytes, fix: dict) -> str:
    """Publish fix + panorama every half second until crossview/fix answers; the answer, as text."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, NavSatFix, NavSatStatus

    context = Context()
    rclpy.init(context=context)
    try:
        ros = rclpy.create_node("install_check_client", namespace="/install_check", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(ros)
        pub_fix = ros.create_publisher(NavSatFix, "gnss/fix", 10)
        pub_pano = ros.create_publisher(CompressedImage, "panorama/compressed", 10)
        got: list[NavSatFix] = []
        ros.create_subscription(NavSatFix, "crossview/fix", got.append, 10)
        deadline = time.monotonic() + START_TIMEOUT_S
        next_send = 0.0
        while not got:
            if proc.poll() is not None:
                raise CheckFailed(f"the node exited with code {proc.returncode} before publishing an estimate")
            if time.monotonic() > deadline:
                raise CheckFailed(f"no crossview/fix within {START_TIMEOUT_S:g} s")
            if time.monotonic() >= next_send:
                stamp = ros.get_clock().now().to_msg()
                msg = NavSatFix(latitude=fix["lat_deg"], longitude=fix["lon_deg"], altitude=0.0)
                msg.header.stamp, msg.header.frame_id = stamp, "gnss"
                msg.status.status, msg.status.service = NavSatStatus.STATUS_FIX, NavSatStatus.SERVICE_GPS
                var = fix["sigma_m"] ** 2
                msg.position_covariance = [var, 0.0, 0.0, 0.0, var, 0.0, 0.0, 0.0, var]
                msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
                pub_fix.publish(msg)
                pano = CompressedImage(format="jpeg", data=jpeg)
                pano.header.stamp, pano.header.frame_id = stamp, "camera"
                pub_pano.publish(pano)
                next_send = time.monotonic() + 0.5
            executor.spin_once(timeout_sec=0.05)
        out = got[0]
        if not (math.isfinite(out.latitude) and math.isfinite(out.longitude)):
            raise CheckFailed(f"crossview/fix is not a position: ({out.latitude}, {out.longitude})")
        return f"crossview/fix ({out.latitude:.7f}, {out.longitude:.7f}) over DDS"
    finally:
        rclpy.shutdown(context=context)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="install_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("prepare", "runtime", "node"))
    p.add_argument("dir", type=Path, help="folder of the prepared model, tiles, panorama and fix")
    p.add_argument("--expect-no-torch", action="store_true", help="runtime: fail when torch is importable")
    p.add_argument("command", nargs="*", help="node: the localize_node command (after --)")
    args = p.parse_args(argv)
    try:
        if args.mode == "prepare":
            fix = prepare(args.dir)
            what = f"model, tiles, panorama and fix ({fix['lat_deg']:.5f}, {fix['lon_deg']:.5f}) in {args.dir}"
        elif args.mode == "runtime":
            what = runtime(args.dir, args.expect_no_torch)
        else:
            if not args.command:
                p.error("node needs the localize_node command after --")
            what = node(args.dir, args.command)
    except CheckFailed as exc:
        print(f"install_check {args.mode}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"install_check {args.mode}: OK: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
