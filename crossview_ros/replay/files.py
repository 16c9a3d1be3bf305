"""The replay's output files: the node's messages as MCAP, one CSV row per panorama."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer

from crossview_ros.bag.drive import stamp_ns
from crossview_ros.bag.writer import typestore
from crossview_ros.replay_evaluation import OUTPUT_TOPICS, FrameRecord, Received


def write_outputs_mcap(path: Path, received: Sequence[Received]) -> Path:
    """The node's messages as one MCAP file (rosbags), log time = header stamp, in stamp order."""
    ts = typestore()
    rows = []
    for r in received:
        msg = ts.deserialize_cdr(r.raw, OUTPUT_TOPICS[r.topic])
        rows.append((stamp_ns(msg.header), r.received_s, r.topic, r.raw))
    rows.sort(key=lambda x: (x[0], x[1]))
    work = Path(tempfile.mkdtemp(prefix=".outputs.", dir=path.parent))
    try:
        bag_dir = work / path.stem
        with Writer(bag_dir, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
            conns = {t: writer.add_connection(t, m, typestore=ts) for t, m in OUTPUT_TOPICS.items()}
            for stamp, _, topic, raw in rows:
                writer.write(conns[topic], stamp, raw)
        os.replace(bag_dir / f"{path.stem}.mcap", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


FRAME_COLUMNS = [f for f in FrameRecord.__dataclass_fields__]


def write_frames_csv(path: Path, frames: Sequence[FrameRecord]) -> Path:
    """One row per panorama of the bag, FRAME_COLUMNS in order; floats to 9 decimals, None empty."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(FRAME_COLUMNS)
    for f in frames:
        row = asdict(f)
        w.writerow(["" if row[c] is None else (f"{row[c]:.9f}" if isinstance(row[c], float) else row[c])
                    for c in FRAME_COLUMNS])
    path.write_text(buf.getvalue())
    return path
