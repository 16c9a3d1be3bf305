"""A simulated drive written as a drive bag (format: crossview_ros.bag.writer).

Turns the simulator's arrays (Drive, GnssTrack, Odometry) and a stream of encoded panoramas
into the bag's message stream, in stamp order (at equal stamps: the panorama with its ground
truth, then the GNSS fix, then odometry), with the datum message first. The datum document
carries, besides the caller's keys, a `bag` block with the format, topics, frames, the drive's
configuration and the GNSS model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros.bag.writer import (
    FORMAT,
    FORMAT_VERSION,
    FRAME_BASE,
    FRAME_ODOM,
    FRAME_UTM,
    TOPIC_DATUM,
    TOPIC_GNSS,
    TOPIC_ODOM,
    TOPICS,
    DriveMessages,
    check_target,
    datum_document,
    stamp_ns,
    write_bag,
)
from crossview_ros.geo import yaw_enu_to_utm
from crossview_ros.sim.drive import Drive
from crossview_ros.sim.gnss import GnssTrack
from crossview_ros.sim.odometry import Odometry

_PANORAMA, _FIX, _ODOM = 1, 2, 3  # message kinds, in their order at equal stamps


def write_drive_bag(
    path: str | Path,
    drive: Drive,
    gnss: GnssTrack,
    odometry: Odometry,
    panoramas: Iterable[bytes],
    datum: dict,
    *,
    overwrite: bool = False,
) -> Path:
    """Write one simulated drive with its GNSS fixes and odometry as an MCAP bag.

    `panoramas` yields one encoded JPEG per drive stamp, in order (it may be a generator, so
    panoramas are rendered while the bag is written). `datum` needs datum_lat_deg,
    datum_lon_deg and seed, or is City.city_json(); utm_zone is added from the drive.
    Returns the bag directory (`<path>/<name>.mcap` + metadata.yaml)."""
    path = Path(path)
    check_target(path, overwrite)
    if str(gnss.zone) != str(drive.zone):
        raise ValueError(f"GNSS track zone {gnss.zone} differs from the drive's zone {drive.zone}")
    datum_doc = datum_document(datum, str(drive.zone))
    datum_doc["bag"] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "topics": TOPICS,
        "frames": {"ground_truth_pose": FRAME_UTM, "odom": FRAME_ODOM, "base": FRAME_BASE},
        "drive": drive.config.to_dict(),
        "gnss_model": gnss.model,
        "gnss_publish_no_fix": bool(gnss.publish_no_fix),
    }
    datum_json = json.dumps(datum_doc, sort_keys=True, allow_nan=False)
    return write_bag(path, _messages(drive, gnss, odometry, panoramas, datum_json), overwrite=overwrite)


def _events(drive: Drive, gnss: GnssTrack, odometry: Odometry) -> list[tuple[int, int, int]]:
    """(stamp_ns, kind, row) of every message, in the order they are written."""
    events = [(stamp_ns(t), _PANORAMA, i) for i, t in enumerate(np.asarray(drive.stamp_s).tolist())]
    events += [
        (stamp_ns(float(gnss.stamp_s[r])), _FIX, int(r))
        for r in np.flatnonzero(np.asarray(gnss.published))
    ]
    events += [(stamp_ns(t), _ODOM, i) for i, t in enumerate(np.asarray(odometry.stamp_s).tolist())]
    events.sort()
    return events


def _messages(
    drive: Drive, gnss: GnssTrack, odometry: Odometry, panoramas: Iterable[bytes], datum_json: str
) -> Iterator[tuple[str, int, Any]]:
    """(topic, stamp_ns, message) of the whole drive; ValueError when the panoramas do not
    match the drive's stamps one to one or one is not a JPEG."""
    build = DriveMessages()
    yaw_grid = np.asarray(yaw_enu_to_utm(drive.yaw_enu_rad, drive.lat_deg, drive.lon_deg, drive.zone))
    t_start = min(stamp_ns(float(x.stamp_s[0])) for x in (drive, gnss, odometry))
    images = iter(panoramas)
    yield TOPIC_DATUM, t_start, build.datum(datum_json)
    g, o = gnss, odometry
    for t_ns, kind, i in _events(drive, gnss, odometry):
        if kind == _PANORAMA:
            jpeg = next(images, None)
            if jpeg is None:
                raise ValueError(
                    f"panoramas ran out after {i} images; "
                    f"the drive has {len(drive.stamp_s)} stamps"
                )
            jpeg = bytes(jpeg)
            if jpeg[:2] != b"\xff\xd8":
                raise ValueError(
                    f"panorama {i} is not a JPEG (it must be encoded bytes starting with FF D8)"
                )
            msgs = build.panorama(t_ns, jpeg, drive.easting_m[i], drive.northing_m[i], float(yaw_grid[i]),
                                  drive.lat_deg[i], drive.lon_deg[i])
            for topic, msg in msgs.items():
                yield topic, t_ns, msg
        elif kind == _FIX:
            if g.valid[i]:
                fix = build.fix(t_ns, (g.lat_deg[i], g.lon_deg[i], g.altitude_m[i]),
                                (g.sigma_e_m[i], g.sigma_n_m[i], g.sigma_u_m[i]))
            else:
                fix = build.fix(t_ns, None)
            yield TOPIC_GNSS, t_ns, fix
        else:
            yield TOPIC_ODOM, t_ns, build.odometry(t_ns, o.x_m[i], o.y_m[i], o.yaw_rad[i], o.pose_cov[i],
                                                   o.speed_mps[i], o.yaw_rate_radps[i], o.twist_var[i])
    if next(images, None) is not None:
        raise ValueError(f"more panoramas than drive stamps ({len(drive.stamp_s)})")
