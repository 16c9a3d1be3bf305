"""A simulated drive written as a drive bag (format: crossview_ros.bag.writer).

Turns the simulator's arrays (Drive, GnssTrack, Odometry) and a stream of encoded panoramas
into the bag's message stream, in stamp order (at equal stamps: the panorama with its ground
truth, then the GNSS fix, then odometry), with the datum message first. The datum document
carries, besides the caller's keys, a `bag` block with the format, topics, frames, the drive's
configuration and the GNSS model. With cameras (crossview_ros.sim.cameras), each panorama is followed
by each camera's CameraInfo and JPEG view at its stamp, and the rig file of their mounts goes into
the bag folder (crossview_ros.bag.rig.RIG_SIDECAR) and the datum's `bag.cameras`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros.bag.rig import RIG_SIDECAR, RigCamera, RigSpec, rig_file_text
from crossview_ros.bag.writer import (
    FORMAT,
    FORMAT_VERSION,
    FRAME_BASE,
    FRAME_ODOM,
    FRAME_UTM,
    MSG_CAMERA_INFO,
    MSG_COMPRESSED,
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
from crossview_ros.camera import Camera
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
    panoramas: Iterable[bytes] | Iterable[tuple[bytes, Sequence[bytes]]],
    datum: dict,
    *,
    overwrite: bool = False,
    cameras: Sequence[Camera] = (),
) -> Path:
    """Write one simulated drive with its GNSS fixes and odometry as an MCAP bag.

    `panoramas` yields one encoded JPEG per drive stamp, in order (it may be a generator, so
    panoramas are rendered while the bag is written); with `cameras`, a (panorama JPEG, the cameras'
    JPEG views in their order) pair per stamp. `datum` needs datum_lat_deg, datum_lon_deg and seed,
    or is City.city_json(); utm_zone is added from the drive.
    Returns the bag directory (`<path>/<name>.mcap` + metadata.yaml, and the rig file with cameras)."""
    path = Path(path)
    check_target(path, overwrite)
    if str(gnss.zone) != str(drive.zone):
        raise ValueError(f"GNSS track zone {gnss.zone} differs from the drive's zone {drive.zone}")
    datum_doc = datum_document(datum, str(drive.zone))
    topics = {**TOPICS, **camera_topics(cameras)}
    datum_doc["bag"] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "topics": topics,
        "frames": {"ground_truth_pose": FRAME_UTM, "odom": FRAME_ODOM, "base": FRAME_BASE},
        "drive": drive.config.to_dict(),
        "gnss_model": gnss.model,
        "gnss_publish_no_fix": bool(gnss.publish_no_fix),
    }
    sidecars = {}
    if cameras:
        rig = rig_spec(cameras)
        datum_doc["bag"]["cameras"] = rig.to_dict()["cameras"]
        sidecars[RIG_SIDECAR] = rig_file_text(rig)
    datum_json = json.dumps(datum_doc, sort_keys=True, allow_nan=False)
    return write_bag(path, _messages(drive, gnss, odometry, panoramas, datum_json, tuple(cameras)),
                     overwrite=overwrite, topics=topics, sidecars=sidecars)


def camera_topics(cameras: Sequence[Camera]) -> dict[str, str]:
    """topic -> message type of each camera's view and CameraInfo (the rig file's default topics)."""
    out = {}
    for image, info in (_topics(cam) for cam in cameras):
        out[image] = MSG_COMPRESSED
        out[info] = MSG_CAMERA_INFO
    return out


def _topics(cam: Camera) -> tuple[str, str]:
    """A simulated camera's (compressed image, CameraInfo) topics: where a rig file without topics reads them."""
    rig_camera = RigCamera(cam.name, cam.mount)
    return rig_camera.image_topics()[0], rig_camera.camera_info_topic


def rig_spec(cameras: Sequence[Camera]) -> RigSpec:
    """The rig file of simulated cameras: their mounts, the default topics."""
    return RigSpec(tuple(RigCamera(cam.name, cam.mount) for cam in cameras))


def camera_messages(build: DriveMessages, t_ns: int, cameras: Sequence[Camera],
                    views: Sequence[bytes], what: str) -> Iterator[tuple[str, int, Any]]:
    """Each camera's CameraInfo and JPEG view at one stamp; ValueError when the views do not match the cameras."""
    if len(views) != len(cameras):
        raise ValueError(f"{what}: {len(views)} views for {len(cameras)} cameras")
    for cam, jpeg in zip(cameras, views):
        jpeg = bytes(jpeg)
        if jpeg[:2] != b"\xff\xd8":
            raise ValueError(f"{what}: the view of camera {cam.name} is not a JPEG")
        image, info = _topics(cam)
        yield info, t_ns, build.camera_info(t_ns, cam.name, cam.model.camera_info_fields())
        yield image, t_ns, build.camera_image(t_ns, cam.name, jpeg)


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
    drive: Drive, gnss: GnssTrack, odometry: Odometry, panoramas: Iterable[Any], datum_json: str,
    cameras: tuple[Camera, ...] = (),
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
            item = next(images, None)
            if item is None:
                raise ValueError(
                    f"panoramas ran out after {i} images; "
                    f"the drive has {len(drive.stamp_s)} stamps"
                )
            jpeg, views = item if cameras else (item, ())
            jpeg = bytes(jpeg)
            if jpeg[:2] != b"\xff\xd8":
                raise ValueError(
                    f"panorama {i} is not a JPEG (it must be encoded bytes starting with FF D8)"
                )
            msgs = build.panorama(t_ns, jpeg, drive.easting_m[i], drive.northing_m[i], float(yaw_grid[i]),
                                  drive.lat_deg[i], drive.lon_deg[i])
            for topic, msg in msgs.items():
                yield topic, t_ns, msg
            yield from camera_messages(build, t_ns, cameras, views, f"panorama {i}")
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
