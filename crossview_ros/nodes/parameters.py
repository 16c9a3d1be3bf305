"""The localize node's parameters: one table that the node declares, config/localize.yaml lists and
the tests check, so that a default, a unit or a description cannot drift between them.

Every LocalizerConfig field is a parameter of the same name and default (the dataclass stays the
one schema: defaults and types come from it, this module adds unit, description and range), plus
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
from crossview_ros.engines import ENGINE_KINDS
from crossview_ros.localizer import FUSION_MODES, HEADING_METHODS, MARGIN_MODES, SEARCH_DEVICES, LocalizerConfig

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


# Unit, description, section and range of every LocalizerConfig field, in the dataclass's order.
# Ranges are the descriptor's closed bounds; LocalizerConfig.validate still refuses values that
# a closed range cannot express (e.g. > 0).
_LOCALIZER_DOCS: dict[str, tuple[str, str, str, tuple[float, float] | None]] = {
    "tile_set": ("path", "tile set folder (crossview-tiles build, then encode with this model); required",
                 "artefacts", None),
    "model": ("path", "exported model folder (crossview-export onnx) that encoded the tile set; required",
              "artefacts", None),
    "engine": ("", "encoder runtime; auto: TensorRT where a GPU and TensorRT are present, else ONNX Runtime",
               "artefacts", None),
    "engine_threads": ("1", "ONNX Runtime intra-op threads, 0 = its default (one per core)", "artefacts",
                       (0, 256)),
    "search_device": ("", "where the scoped search runs (or cuda:N); ~100 rows per frame: cpu is enough",
                      "artefacts", None),
    "scope_sigma_k": ("1", "search radius = k x the fix's horizontal sigma (largest axis), before clamping",
                      "scope", (0.0, 100.0)),
    "scope_min_m": ("m", "smallest search radius, whatever the fix claims", "scope", (0.0, 1.0e5)),
    "scope_max_m": ("m", "largest search radius before stale widening (VIGOR's noisy-GPS protocol: 200 m)",
                    "scope", (0.0, 1.0e5)),
    "default_fix_sigma_m": ("m", "horizontal 1-sigma assumed when the fix reports no covariance", "scope",
                            (0.0, 1.0e5)),
    "max_speed_mps": ("m/s", "fastest platform speed: the radius grows by |panorama - fix stamp| x this",
                      "scope", (0.0, 1000.0)),
    "fix_max_age_s": ("s", "|panorama stamp - fix stamp| above this rejects the frame (STALE_STAMP)", "stamps",
                      (0.0, 3600.0)),
    "max_future_s": ("s", "panorama or fix stamps later than now + this are rejected (FUTURE_STAMP)", "stamps",
                     (0.0, 3600.0)),
    "top_k": ("1", "candidate tiles retrieved in the scope (fusion, spread and margin use them)", "retrieval",
              (1, 10000)),
    "fusion": ("", "best: the top-1 tile's offset; weighted: score-weighted mean of agreeing ones",
               "retrieval", None),
    "fusion_temperature": ("1", "softmax temperature on cosine scores for the fusion and spread weights",
                           "retrieval", (0.0, 100.0)),
    "fusion_radius_m": ("m", "candidates whose position lies within this of the top-1's agree with it",
                        "retrieval", (0.0, 1.0e4)),
    "margin_mode": ("", "top2: top-1 minus top-2 score; distinct: minus the best non-overlapping tile",
                    "retrieval", None),
    "match_prior": ("bool", "bev models: pick the pose maximising model likelihood x GNSS prior "
                            "(false: the likelihood alone)", "retrieval", None),
    "track": ("bool", "bev models on a stream: the last frame's posterior, moved, is a prior too (a grid filter; "
                      "false: every frame alone)", "retrieval", None),
    "track_speed_mps": ("m/s", "1-sigma speed of the track's random walk between frames (walk ~1.5, car ~10)",
                        "retrieval", (0.01, 100.0)),
    "track_max_gap_s": ("s", "a frame more than this after the last matched one starts a new track", "retrieval",
                        (0.01, 3600.0)),
    "track_uniform_weight": ("1", "share of the moved belief spread evenly over its area, so a wrong lock can go",
                             "retrieval", (1e-9, 0.999)),
    "track_likelihood_weight": ("1", "exponent on each frame's model likelihood in a track (consecutive views "
                                     "repeat their errors; 1: independent frames)", "retrieval", (0.01, 1.0)),
    "min_margin": ("1", "gate: publish only when the margin (score units; bev: posterior) is above this (LOW_MARGIN)",
                   "gating", (-2.0, 2.0)),
    "max_mahalanobis": ("1", "gate: refuse a squared Mahalanobis distance to the fix above this "
                             "(MAHALANOBIS; chi2 2 dof 99.9 %)", "gating", (0.0, 1.0e12)),
    "heading": ("bool", "estimate yaw and publish crossview/heading (needs tile images; one aerial encode)",
                "heading", None),
    "heading_method": ("", "polar: DSM-style polar correlation; revisiting: Zhu 2021 baseline", "heading", None),
    "camera_height_m": ("m", "camera above the ground for the polar heading; 0 = pooled rows", "heading",
                        (0.0, 100.0)),
    "covariance_file": ("path", "'' = <model>/covariance.json if present, 'none' = the cov_* values "
                                "below, or a calibration file", "covariance", None),
    "cov_sigma0_m": ("m", "1-sigma at margin = score = spread = offset = 0 (uncalibrated default)", "covariance",
                     (0.0, 1.0e5)),
    "cov_margin_coef": ("1", "d ln(sigma) / d margin (uncalibrated default)", "covariance", None),
    "cov_score_coef": ("1", "d ln(sigma) / d score (uncalibrated default)", "covariance", None),
    "cov_spread_coef": ("1", "d ln(sigma) / d ln(1 + spread_m) (uncalibrated default)", "covariance", None),
    "cov_offset_coef": ("1/m", "d ln(sigma) / d offset from the tile centre (uncalibrated default)", "covariance",
                        None),
    "cov_sigma_min_m": ("m", "1-sigma floor of the position covariance", "covariance", (0.0, 1.0e5)),
    "cov_fix_sigma_scale": ("1", "the fix's reported sigma x this is used (scope, match prior, gate); urban "
                                 "receivers are optimistic (uncalibrated default)", "covariance", (0.0, 1.0e3)),
    "yaw_variance_scale": ("rad^(2-2p)", "yaw variance = this x the heading estimator's raw variance^power "
                                         "(uncalibrated)", "covariance", (0.0, 1.0e6)),
    "yaw_variance_power": ("1", "the power p on the raw yaw variance (uncalibrated; 1 = proportional)",
                           "covariance", (0.0, 4.0)),
    "yaw_variance_min_rad2": ("rad^2", "yaw variance floor", "covariance", (0.0, 10.0)),
    "log_throttle_s": ("s", "at most one log line per rejection reason per this many seconds", "node",
                       (0.0, 3600.0)),
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "engine": tuple(ENGINE_KINDS), "search_device": tuple(SEARCH_DEVICES), "fusion": tuple(FUSION_MODES),
    "margin_mode": tuple(MARGIN_MODES), "heading_method": tuple(HEADING_METHODS), "pose_origin": POSE_ORIGINS,
}

SECTIONS: dict[str, str] = {
    "artefacts": "Artefacts, loaded once at start-up (tile set and model must match: same model hash).",
    "scope": "Search scope around the GNSS fix: radius = clamp(k x sigma, min, max) + age x max speed.",
    "stamps": "Pairing of panorama and fix stamps; bad stamps are counted in /diagnostics, never published.",
    "retrieval": "Descriptor retrieval and offset fusion inside the scope.",
    "gating": "Gating: a frame is published only when it passes both gates.",
    "heading": "Heading (yaw) from the panorama against the chosen tile.",
    "covariance": "Covariance model (UNCALIBRATED defaults: calibrate on a validation drive, see README).",
    "node": "Node: frames, output conventions, diagnostics and logging.",
}

_NODE_ONLY: tuple[ParamSpec, ...] = (
    ParamSpec("pose_frame", "map", "frame_id", "frame_id of crossview/pose (REP-105 world frame of the EKF)",
              "node", read_only=False),
    ParamSpec("pose_origin", "datum", "", "datum: x east, y north in the ENU plane at `datum`; utm: "
                                          "easting, northing, grid yaw in the tile set's zone",
              "node", choices=POSE_ORIGINS),
    ParamSpec("datum", [], "deg", "[lat_deg, lon_deg] origin of the datum pose frame; [] = the first valid fix "
                                  "(logged)", "node", array=True),
    ParamSpec("fix_frame", "gnss", "frame_id", "frame_id of crossview/fix", "node", read_only=False),
    ParamSpec("base_frame", "base_link", "frame_id", "frame_id of crossview/heading (sensor_msgs/Imu)", "node",
              read_only=False),
    ParamSpec("diagnostics_period_s", 1.0, "s", "period of the /diagnostics status (counters, latency)", "node",
              range=(0.01, 3600.0)),
)


def _localizer_specs() -> tuple[ParamSpec, ...]:
    defaults = LocalizerConfig()
    out = []
    for f in dataclasses.fields(LocalizerConfig):
        unit, description, section, rng = _LOCALIZER_DOCS[f.name]
        default = getattr(defaults, f.name)
        if isinstance(default, float) and rng is not None:
            rng = (float(rng[0]), float(rng[1]))
        out.append(ParamSpec(f.name, default, unit, description, section, range=rng,
                             choices=_CHOICES.get(f.name, ())))
    return tuple(out)


PARAMETERS: tuple[ParamSpec, ...] = _localizer_specs() + _NODE_ONLY
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


def node_settings(values: Mapping[str, Any]) -> NodeSettings:
    """Validate the node-only parameters (ValueError naming the parameter, its value and what is allowed)."""
    origin = values["pose_origin"]
    if origin not in POSE_ORIGINS:
        raise ValueError(f"parameter pose_origin = {origin!r}: must be one of {POSE_ORIGINS}")
    raw = values["datum"]
    datum = None
    if raw is not None and len(raw) > 0:
        if len(raw) != 2:
            raise ValueError(f"parameter datum = {list(raw)!r}: must be [] or [lat_deg, lon_deg]")
        try:
            geo.check_latlon(float(raw[0]), float(raw[1]))
        except geo.GeoError as exc:
            raise ValueError(f"parameter datum = {list(raw)!r}: {exc}") from None
        datum = (float(raw[0]), float(raw[1]))
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
# Read-only parameters (all but the three frame ids) need a restart: the Localizer is built once.
# Generated from crossview_ros/nodes/parameters.py (test_launch.py checks that they agree):
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
