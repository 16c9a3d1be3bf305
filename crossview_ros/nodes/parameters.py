"""The localize node's parameters: one table that the node declares, config/localize.yaml lists and
the tests check, so that a default, a unit or a description cannot drift between them.

Every LocalizerConfig field is a parameter of the same name, default, unit, description and range,
all read from the field's ParamDoc (crossview_ros/localizer_config.py: written once, there), plus
the node's own (frames, pose origin, datum, diagnostics period). Pure Python, no rclpy: the
launch-file and YAML tests import it without a ROS installation.

    python -m crossview_ros.nodes.parameters > config/localize.yaml   # regenerate the YAML
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crossview_ros import geo
from crossview_ros.localizer_config import SECTIONS, LocalizerConfig, param_doc

NODE_NAME = "crossview_localizer"
# The parameter file's key: matches the node in any namespace (a plain "crossview_localizer:" key
# would apply only to /crossview_localizer, silently not to a node launched with a namespace).
YAML_NODE_KEY = f"/**/{NODE_NAME}"
POSE_ORIGINS = ("datum", "utm")
# Parameters ROS itself declares on every node or reads from overrides; never "unknown".
ROS_OWN_PARAMETERS = ("use_sim_time", "start_type_description_service")
ROS_OWN_PREFIXES = ("qos_overrides.",)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default, unit (shown in brackets), one-line description, limits."""

    name: str
    default: Any  # bool | int | float | str | list[float]; its type is the parameter's type
    unit: str  # "m", "s", "1" (dimensionless), "path", "frame_id", or the choices "a|b|c"
    description: str
    section: str  # heading of the group in config/localize.yaml
    range: tuple[float, float] | None = None  # closed [from, to] for the descriptor; None = unbounded
    choices: tuple[str, ...] = ()
    read_only: bool = True  # the Localizer is built once at start-up: changing it needs a restart
    array: bool = False  # a double array (the default is then a list)

    @property
    def type_name(self) -> str:
        """ROS parameter type: bool, integer, double, string or double_array."""
        if self.array:
            return "double_array"
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "integer"
        if isinstance(self.default, float):
            return "double"
        return "string"

    @property
    def bracket(self) -> str:
        """What config/localize.yaml shows in brackets: the choices, else the unit."""
        return "|".join(self.choices) if self.choices else self.unit


_NODE_ONLY: tuple[ParamSpec, ...] = (
    ParamSpec("pose_frame", "map", "frame_id", "frame_id of crossview/pose (REP-105 world frame of the EKF)",
              "node", read_only=False),
    ParamSpec("pose_origin", "datum", "", "datum: x east, y north in the ENU plane at `datum`; utm: "
                                          "easting, northing, grid yaw in the tile set's zone",
              "node", choices=POSE_ORIGINS),
    ParamSpec("datum", [], "deg", "[lat_deg, lon_deg] origin of the datum pose frame; [] = the first fix that "
                                  "passes every check (logged); settable at run time ([] resets)", "node",
              read_only=False, array=True),
    ParamSpec("fix_frame", "gnss", "frame_id", "frame_id of crossview/fix", "node", read_only=False),
    ParamSpec("base_frame", "base_link", "frame_id", "frame_id of crossview/heading (sensor_msgs/Imu)", "node",
              read_only=False),
    ParamSpec("diagnostics_period_s", 1.0, "s", "period of the /diagnostics status (counters, latency)", "node",
              range=(0.01, 3600.0)),
)


def _localizer_specs() -> tuple[ParamSpec, ...]:
    """A ParamSpec per LocalizerConfig field, from the field's own ParamDoc (localizer_config.py)."""
    out = []
    for f in dataclasses.fields(LocalizerConfig):
        doc = param_doc(f.name)
        rng = doc.range
        if isinstance(f.default, float) and rng is not None:
            rng = (float(rng[0]), float(rng[1]))
        out.append(ParamSpec(f.name, f.default, doc.unit, doc.description, doc.section, range=rng,
                             choices=doc.choices))
    return tuple(out)


# In config/localize.yaml's order: by section, then as declared within one.
PARAMETERS: tuple[ParamSpec, ...] = tuple(sorted(_localizer_specs() + _NODE_ONLY,
                                                 key=lambda p: list(SECTIONS).index(p.section)))
BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
LOCALIZER_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LocalizerConfig))
DYNAMIC_KEYS: tuple[str, ...] = tuple(p.name for p in PARAMETERS if not p.read_only)


def is_ros_own(name: str) -> bool:
    """True for parameters that ROS declares or interprets itself (never refused as unknown)."""
    return name in ROS_OWN_PARAMETERS or name.startswith(ROS_OWN_PREFIXES)


@dataclass(frozen=True)
class NodeSettings:
    """The node-only parameters, validated."""

    pose_frame: str
    pose_origin: str
    datum: tuple[float, float] | None  # (lat_deg, lon_deg); None = the first valid fix
    fix_frame: str
    base_frame: str
    diagnostics_period_s: float


def check_frame_id(name: str, value: Any) -> str:
    """A usable frame_id (ValueError otherwise): non-empty, no whitespace, no leading '/' (tf2 refuses it)."""
    if not isinstance(value, str) or not value or value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"parameter {name} = {value!r}: must be a non-empty frame_id without spaces")
    if value.startswith("/"):
        raise ValueError(f"parameter {name} = {value!r}: frame_ids must not start with '/' (tf2 refuses them); "
                         f"use {value.lstrip('/')!r}")
    return value


def parse_datum(raw: Sequence[float] | None) -> tuple[float, float] | None:
    """The datum parameter: [] -> None (the first valid fix), [lat_deg, lon_deg] -> checked tuple."""
    if raw is None or len(raw) == 0:
        return None
    if len(raw) != 2:
        raise ValueError(f"parameter datum = {list(raw)!r}: must be [] or [lat_deg, lon_deg]")
    try:
        geo.check_latlon(float(raw[0]), float(raw[1]))
    except geo.GeoError as exc:
        raise ValueError(f"parameter datum = {list(raw)!r}: {exc}") from None
    return float(raw[0]), float(raw[1])


def node_settings(values: Mapping[str, Any]) -> NodeSettings:
    """Validate the node-only parameters (ValueError naming the parameter, its value and what is allowed)."""
    origin = values["pose_origin"]
    if origin not in POSE_ORIGINS:
        raise ValueError(f"parameter pose_origin = {origin!r}: must be one of {POSE_ORIGINS}")
    datum = parse_datum(values["datum"])
    period = values["diagnostics_period_s"]
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not math.isfinite(period) \
            or period <= 0:
        raise ValueError(f"parameter diagnostics_period_s = {period!r}: must be a number of seconds > 0")
    return NodeSettings(
        pose_frame=check_frame_id("pose_frame", values["pose_frame"]), pose_origin=origin, datum=datum,
        fix_frame=check_frame_id("fix_frame", values["fix_frame"]),
        base_frame=check_frame_id("base_frame", values["base_frame"]), diagnostics_period_s=float(period))


def localizer_config(values: Mapping[str, Any]) -> LocalizerConfig:
    """LocalizerConfig from the parameter values (ValueError from its validate())."""
    return LocalizerConfig.from_dict({k: values[k] for k in LOCALIZER_KEYS})


# --------------------------------------------------------------------------- config/localize.yaml


def format_yaml_value(value: Any) -> str:
    """A YAML scalar that PyYAML and rcl_yaml_param_parser read back as the same type and value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e")  # YAML 1.1 floats need a dot: 1e-10 would read as a string
        return text
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_yaml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a parameter value")


HEADER = f"""\
# Parameters of the crossview_ros localize node (node name: {NODE_NAME}).
# Every parameter: default, [unit or choices], one-line description. Paths may be absolute or
# relative to the working directory of the node. Load with:  --ros-args --params-file config/localize.yaml
# Read-only parameters (all but the three frame ids and the datum) need a restart: the Localizer is built once.
# Generated from crossview_ros/localizer_config.py and nodes/parameters.py (test_launch.py checks them):
#   python -m crossview_ros.nodes.parameters > config/localize.yaml
"""


def format_params_yaml(specs: Sequence[ParamSpec] = PARAMETERS) -> str:
    """The text of config/localize.yaml: every parameter with its default, unit and description."""
    lines = [HEADER.rstrip("\n"), f"{YAML_NODE_KEY}:", "  ros__parameters:"]
    for section, title in SECTIONS.items():
        members = [p for p in specs if p.section == section]
        if not members:
            continue
        lines.append(f"    # {title}")
        width = max(len(p.name) + 2 + len(format_yaml_value(p.default)) for p in members)
        for p in members:
            entry = f"{p.name}: {format_yaml_value(p.default)}"
            lines.append(f"    {entry.ljust(width)}  # [{p.bracket}] {p.description}")
    return "\n".join(lines) + "\n"


def main() -> int:
    print(format_params_yaml(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
