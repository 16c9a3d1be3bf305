"""Make a "foreign" test bag from a simulated drive: what a real robot's recording looks like.

    python -m crossview_ros.bag.foreign SIM_BAG OUT_BAG [--storage sqlite3|mcap] [--image compressed|raw]
                                        [--truth navsat|odom-enu|pose-utm|none] [--write-topics FILE]

The drive's messages under a robot's topic names, stored as sqlite3 (.db3) or MCAP, without the
simulator's /crossview/datum (the datum then comes from the first valid fix):

| simulator topic        | foreign topic                             | type                                     |
|------------------------|-------------------------------------------|------------------------------------------|
| `/panorama/compressed` | `/camera/image/compressed` (raw: `/camera/image`) | CompressedImage (raw: Image bgr8) |
| `/gnss/fix`            | `/gps/fix`                                | NavSatFix, unchanged                     |
| `/odom`                | `/wheel/odom`                             | Odometry, unchanged                      |
| `/ground_truth/fix`    | `/rtk/fix` (`--truth navsat`)             | NavSatFix, status GBAS_FIX, sigma 2 cm   |
| `/ground_truth/pose`   | `/rtk/odom` (odom-enu), `/rtk/pose` (pose-utm) | Odometry in local ENU, PoseStamped in UTM |

The truth positions are the simulator's exact ones (an RTK receiver is about 2 cm off; its stated
covariance says so). `odom-enu` writes base_link in a local frame anchored at the drive's first true
position, its x axis ENU_YAW_DEG counter-clockwise from east (--truth-frame enu:LAT,LON,YAW_DEG, which
--write-topics records). --write-topics FILE writes the YAML mapping that reads the bag back (docs/recordings.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from crossview_ros import geo
from crossview_ros.atomic import staging_dir, write_text_atomic
from crossview_ros.bag.drive import bag_location, stamp_ns
from crossview_ros.bag.topics import MSG_IMAGE
from crossview_ros.bag.writer import (
    MSG_COMPRESSED, MSG_NAVSAT, MSG_ODOM, MSG_POSE, TOPIC_DATUM, TOPIC_GNSS, TOPIC_GT_FIX, TOPIC_GT_POSE, TOPIC_ODOM,
    TOPIC_PANORAMA, DriveMessages, check_target, typestore,
)
from crossview_ros.replay_errors import BagError

FOREIGN_PANORAMA = "/camera/image/compressed"
FOREIGN_PANORAMA_RAW = "/camera/image"
FOREIGN_FIX = "/gps/fix"
FOREIGN_ODOM = "/wheel/odom"
FOREIGN_TRUTH = {"navsat": "/rtk/fix", "odom-enu": "/rtk/odom", "pose-utm": "/rtk/pose"}
RTK_SIGMA_M = 0.02  # the stated 1-sigma of the "RTK" truth (east, north; up twice that)
ENU_YAW_DEG = 30.0  # odom-enu: the local frame's x axis, counter-clockwise from east
STORAGE = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
TRUTH_KINDS = (*FOREIGN_TRUTH, "none")


def foreign_mapping(image: str = "compressed", truth: str = "navsat",
                    anchor: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """The topic mapping (the --topics YAML keys) that reads a converted bag back."""
    out: dict[str, Any] = {"panorama": FOREIGN_PANORAMA_RAW if image == "raw" else FOREIGN_PANORAMA,
                           "fix": FOREIGN_FIX, "odom": FOREIGN_ODOM, "truth": FOREIGN_TRUTH.get(truth),
                           "truth_heading": None, "datum": None}
    if truth == "pose-utm":
        out["truth_frame"] = "utm"
    elif truth == "odom-enu" and anchor is not None:
        out["truth_frame"] = f"enu:{anchor[0]!r},{anchor[1]!r},{anchor[2]!r}"
    return out


def _jpeg_to_image(ts: Any, msg: Any) -> Any:
    """CompressedImage (JPEG) -> sensor_msgs/Image bgr8 of the same pixels, as a camera driver publishes."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(bytes(memoryview(msg.data).cast("B")), np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BagError("a panorama of the simulated drive is not a JPEG that OpenCV decodes")
    h, w = bgr.shape[:2]
    return ts.types[MSG_IMAGE](header=msg.header, height=h, width=w, encoding="bgr8", is_bigendian=0, step=w * 3,
                               data=np.ascontiguousarray(bgr).reshape(-1))


def _rtk_fix(ts: Any, msg: Any) -> Any:
    """The true position as an RTK receiver reports it: GBAS_FIX, a known 2 cm covariance."""
    fix_cls = ts.types[MSG_NAVSAT]
    status = ts.types["sensor_msgs/msg/NavSatStatus"](status=2, service=1)  # GBAS_FIX, GPS
    cov = np.diag([RTK_SIGMA_M ** 2, RTK_SIGMA_M ** 2, (2 * RTK_SIGMA_M) ** 2]).ravel()
    return fix_cls(header=msg.header, status=status, latitude=msg.latitude, longitude=msg.longitude,
                   altitude=msg.altitude, position_covariance=cov,
                   position_covariance_type=fix_cls.COVARIANCE_TYPE_DIAGONAL_KNOWN)


class _EnuTruth:
    """odom-enu: the truth pose as nav_msgs/Odometry in a local frame anchored at the first true fix."""

    def __init__(self, zone: geo.UTMZone) -> None:
        self.zone, self.build = zone, DriveMessages()
        self.anchor: tuple[float, float, float] | None = None
        self.enu: geo.LocalENU | None = None

    def message(self, msg: Any) -> Any:
        p = msg.pose.position
        lat, lon = (float(v) for v in geo.utm_to_latlon(p.x, p.y, self.zone))
        q = msg.pose.orientation
        yaw_enu = float(geo.yaw_utm_to_enu(2.0 * math.atan2(q.z, q.w), lat, lon, self.zone))
        if self.enu is None:
            self.anchor = (lat, lon, ENU_YAW_DEG)
            self.enu = geo.LocalENU(lat, lon)
        e, n, _ = self.enu.forward(lat, lon, 0.0)
        a = math.radians(ENU_YAW_DEG)
        x, y = math.cos(a) * e + math.sin(a) * n, -math.sin(a) * e + math.cos(a) * n
        cov = np.diag([RTK_SIGMA_M ** 2, RTK_SIGMA_M ** 2, 1e-4])
        return self.build.odometry(stamp_ns(msg.header), float(x), float(y), yaw_enu - a, cov, 0.0, 0.0,
                                   np.array([1e-4, 1e-4]))


def convert_drive_bag(src: str | os.PathLike, dst: str | os.PathLike, *, storage: str = "sqlite3",
                      image: str = "compressed", truth: str = "navsat", overwrite: bool = False) -> dict[str, Any]:
    """Write the foreign bag (module docstring) at dst; returns the mapping that reads it back."""
    if storage not in STORAGE or image not in ("compressed", "raw") or truth not in TRUTH_KINDS:
        raise BagError(f"storage {storage!r}, image {image!r} or truth {truth!r} is not one of "
                       f"{list(STORAGE)}, ['compressed', 'raw'], {list(TRUTH_KINDS)}")
    dst = Path(dst)
    check_target(dst, overwrite)
    ts = typestore()
    pano_topic = FOREIGN_PANORAMA_RAW if image == "raw" else FOREIGN_PANORAMA
    plan = {TOPIC_PANORAMA: (pano_topic, MSG_IMAGE if image == "raw" else MSG_COMPRESSED),
            TOPIC_GNSS: (FOREIGN_FIX, MSG_NAVSAT), TOPIC_ODOM: (FOREIGN_ODOM, MSG_ODOM)}
    if truth == "navsat":
        plan[TOPIC_GT_FIX] = (FOREIGN_TRUTH[truth], MSG_NAVSAT)
    elif truth != "none":
        plan[TOPIC_GT_POSE] = (FOREIGN_TRUTH[truth], MSG_ODOM if truth == "odom-enu" else MSG_POSE)
    with AnyReader([bag_location(src)], default_typestore=ts) as reader:
        topics = {c.topic for c in reader.connections}
        if not {TOPIC_PANORAMA, TOPIC_GNSS, TOPIC_DATUM} <= topics:
            raise BagError(f"{src} is not a simulated drive bag (crossview-sim drive): it has {sorted(topics)}")
        datum = next(reader.deserialize(raw, c.msgtype) for c, _, raw in
                     reader.messages(connections=[c for c in reader.connections if c.topic == TOPIC_DATUM]))
        enu_truth = _EnuTruth(geo.UTMZone.parse(json.loads(datum.data)["utm_zone"]))
        with staging_dir(dst) as work:
            bag = work / dst.name
            with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=STORAGE[storage]) as writer:
                conns = {old: writer.add_connection(new, msgtype, typestore=ts) for old, (new, msgtype) in plan.items()}
                wanted = [c for c in reader.connections if c.topic in plan]
                for conn, log_ns, raw in reader.messages(connections=wanted):
                    out = raw
                    if conn.topic == TOPIC_PANORAMA and image == "raw":
                        out = ts.serialize_cdr(_jpeg_to_image(ts, reader.deserialize(raw, conn.msgtype)), MSG_IMAGE)
                    elif conn.topic == TOPIC_GT_FIX:
                        out = ts.serialize_cdr(_rtk_fix(ts, reader.deserialize(raw, conn.msgtype)), MSG_NAVSAT)
                    elif conn.topic == TOPIC_GT_POSE and truth == "odom-enu":
                        out = ts.serialize_cdr(enu_truth.message(reader.deserialize(raw, conn.msgtype)), MSG_ODOM)
                    writer.write(conns[conn.topic], log_ns, out)
            if dst.exists():
                os.replace(dst, work / "replaced")
            os.replace(bag, dst)
    return foreign_mapping(image, truth, enu_truth.anchor)


def main(argv: Sequence[str] | None = None) -> int:
    """python -m crossview_ros.bag.foreign: exit 0 done, 2 bad input (one line on stderr)."""
    p = argparse.ArgumentParser(prog="python -m crossview_ros.bag.foreign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="simulated drive bag (crossview-sim drive)")
    p.add_argument("dst", help="foreign bag folder to write")
    p.add_argument("--storage", choices=list(STORAGE), default="sqlite3", help="rosbag2 storage (default sqlite3)")
    p.add_argument("--image", choices=("compressed", "raw"), default="compressed",
                   help="panoramas as CompressedImage JPEG (default) or raw sensor_msgs/Image bgr8")
    p.add_argument("--truth", choices=TRUTH_KINDS, default="navsat",
                   help="truth as an RTK NavSatFix (default), an Odometry in a local ENU frame, a PoseStamped in "
                        "UTM, or none")
    p.add_argument("--write-topics", metavar="FILE", help="write the YAML topic mapping that reads the bag back")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_BAG")
    args = p.parse_args(argv)
    try:
        mapping = convert_drive_bag(args.src, args.dst, storage=args.storage, image=args.image, truth=args.truth,
                                    overwrite=args.overwrite)
    except (BagError, FileExistsError, OSError) as exc:
        print(f"crossview_ros.bag.foreign: error: {exc}", file=sys.stderr)
        return 2
    if args.write_topics:
        write_text_atomic(args.write_topics, yaml.safe_dump(mapping, sort_keys=False))
    flags = " ".join(f"--{k.replace('_', '-')}{'' if k == 'truth_frame' else '-topic'} "
                     f"{'none' if v is None else v}" for k, v in mapping.items())
    print(f"wrote {args.dst} ({args.storage}); read it with: {flags}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
