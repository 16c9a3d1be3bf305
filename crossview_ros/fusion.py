"""A planar EKF set up like robot_localization's ekf_node in two_d_mode, for the replay's fused track.

robot_localization (C++) cannot be installed here, so the replay evaluates fusion with filterpy's
ExtendedKalmanFilter driven the way robot_localization drives its own EKF, and reads its noise,
inputs and thresholds from the `ekf_filter_node_map` block of config/ekf.yaml so the shipped
config and the evaluated filter agree. What is mirrored:

- state [x, y, yaw, vx, vy, vyaw]: robot_localization's 15-D state restricted to what two_d_mode
  keeps (accelerations dropped: no input here measures them); x, y, yaw in the world frame (the
  datum's ENU plane: x east, y north, yaw 0 = east, CCW), velocities in base_link;
- motion model: omnidirectional constant velocity, x += (cos(yaw) vx - sin(yaw) vy) dt,
  y += (sin(yaw) vx + cos(yaw) vy) dt, yaw += vyaw dt, with its Jacobian; P = F P F' + Q dt where
  Q is process_noise_covariance (per second, as robot_localization scales it);
- measurements select state variables with the input's *_config vector and carry the message's
  covariance (diagonal floored at 1e-9, as robot_localization does); angles in the innovation are
  wrapped to (-pi, pi];
- gating: a measurement is rejected when its squared Mahalanobis distance y' (H P H' + R)^-1 y
  >= threshold^2 (robot_localization's checkMahalanobisThreshold; threshold in sigmas, unset = never);
- initialisation: the first measurement of any input sets the variables it measures and their
  covariance; the others keep initial_state and initial_estimate_covariance.

What is not: no IMU (the drive bags carry none), no control input, no dynamic process noise, no
tf lookups (the inputs are already in base_link or the world frame). Messages are processed in
stamp order, which robot_localization reaches only with smooth_lagged_data for late poses.
The raw GNSS input (navsat_transform's odometry/gps) is a switch: FusionConfig.use_gnss. Our
heading (an imuN input on crossview/heading, yaw only) is fused when the YAML names one: as its
own input, with its own Mahalanobis gate, so that a run of wrong headings cannot make the
filter refuse good positions (one test per input, as robot_localization does). A YAML that fuses
the yaw in the pose input as well is refused: the same heading counted twice, under one gate.

Nothing here keeps the filter from locking itself out: robot_localization has no such mechanism
either. A track that has drifted takes good poses back only when its covariance P has grown
enough for the gate (d^2 = D^2 / (P + R) < threshold^2), and P grows by the process noise; so
config/ekf.yaml chooses the gates (chi-square 99.9 % of our calibrated covariance) and the x, y
process noise together, and its comments give the resulting re-entry times.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filterpy.kalman import ExtendedKalmanFilter

STATE = ("x", "y", "yaw", "vx", "vy", "vyaw")
RL_INDEX = {"x": 0, "y": 1, "yaw": 5, "vx": 6, "vy": 7, "vyaw": 11}  # places in robot_localization's 15-D state
RL_STATE_SIZE = 15
_IX = {name: i for i, name in enumerate(STATE)}
YAW = _IX["yaw"]
ANGLES = frozenset({"yaw"})
MIN_VARIANCE = 1e-9  # robot_localization floors measurement variances at this
UNKNOWN_YAW_VARIANCE_RAD2 = 1e5  # a pose whose yaw variance is this or more carries no heading (the node sends 1e6)
# robot_localization's default process_noise_covariance diagonal (x..az), per second.
RL_DEFAULT_PROCESS_NOISE = (0.05, 0.05, 0.06, 0.03, 0.03, 0.06, 0.025, 0.025, 0.04, 0.01, 0.01, 0.02, 0.01, 0.01, 0.015)
MAP_NODE = "ekf_filter_node_map"
GNSS_TOPIC_SUFFIX = "odometry/gps"
POSE_TOPIC_SUFFIX = "crossview/pose"
HEADING_TOPIC_SUFFIX = "crossview/heading"
KINDS = ("odom", "pose", "gnss", "heading")


def wrap_rad(a: float) -> float:
    """Angle to (-pi, pi]."""
    w = math.pi - (math.pi - a) % (2.0 * math.pi)
    return math.pi if w <= -math.pi else w


@dataclass(frozen=True)
class SensorConfig:
    """One input of the filter: which state variables it updates and its rejection threshold."""

    variables: tuple[str, ...]  # subset of STATE, in STATE order
    rejection_threshold: float = math.inf  # Mahalanobis distance in sigmas; inf = never reject
    topic: str = ""  # where robot_localization reads it (documentation only)

    def __post_init__(self) -> None:
        bad = [v for v in self.variables if v not in _IX]
        if bad:
            raise ValueError(f"sensor variables {bad} are not in the planar state {STATE}")
        if not self.rejection_threshold > 0:
            raise ValueError(f"rejection_threshold must be > 0 sigmas (inf = off), got {self.rejection_threshold}")


@dataclass(frozen=True)
class FusionConfig:
    """Noise, inputs and gates of the planar EKF; from_ekf_yaml() reads them from config/ekf.yaml."""

    process_noise_per_s: np.ndarray = field(  # (6, 6) Q per second of prediction
        default_factory=lambda: np.diag([RL_DEFAULT_PROCESS_NOISE[RL_INDEX[n]] for n in STATE]))
    initial_covariance: np.ndarray = field(  # (6, 6) P before the first measurement
        default_factory=lambda: np.diag([1e8, 1e8, math.pi ** 2, 1.0, 1.0, 1.0]))
    initial_state: np.ndarray = field(default_factory=lambda: np.zeros(6))  # (6,) state before the first measurement
    odom: SensorConfig = SensorConfig(("vx", "vy", "vyaw"), math.inf, "/odom")  # wheel odometry twist
    pose: SensorConfig = SensorConfig(("x", "y"), 5.0, "/crossview/pose")  # our pose (x, y[, yaw])
    gnss: SensorConfig = SensorConfig(("x", "y"), 5.0, "/odometry/gps")  # raw fix via navsat_transform
    heading: SensorConfig | None = None  # our heading (Imu yaw) as its own input with its own gate; None: not fused
    use_gnss: bool = False  # fuse the raw GNSS fix as well (navsat_transform's role)
    source: str = "built-in defaults (robot_localization's process noise)"  # where the values came from

    def __post_init__(self) -> None:
        for name, shape in (("process_noise_per_s", (6, 6)), ("initial_covariance", (6, 6)), ("initial_state", (6,))):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape or not np.all(np.isfinite(value)):
                raise ValueError(f"FusionConfig.{name} must be a finite {shape} array, got shape {value.shape}")
            object.__setattr__(self, name, value)

    def sensor(self, kind: str) -> SensorConfig | None:
        if kind not in KINDS:
            raise ValueError(f"measurement kind {kind!r} is not one of {KINDS}")
        return getattr(self, kind)

    def describe(self) -> str:
        """One paragraph for the report: inputs, variables, thresholds and where they came from."""
        def gate(s: SensorConfig) -> str:
            if math.isinf(s.rejection_threshold):
                return "never rejected"
            return f"rejected at {s.rejection_threshold:g} sigma"

        parts = [f"wheel odometry twist ({', '.join(self.odom.variables)}; {gate(self.odom)})",
                 f"crossview pose ({', '.join(self.pose.variables)}; {gate(self.pose)})"]
        if self.heading is not None:
            parts.append(f"crossview heading ({', '.join(self.heading.variables)}; {gate(self.heading)})")
        if self.use_gnss:
            parts.append(f"raw GNSS fix as position ({', '.join(self.gnss.variables)}; {gate(self.gnss)})")
        q = ", ".join(f"{n} {self.process_noise_per_s[i, i]:g}" for i, n in enumerate(STATE))
        return (f"filterpy ExtendedKalmanFilter, 2-D (robot_localization two_d_mode: x, y, yaw, vx, vy, vyaw), "
                f"inputs: {'; '.join(parts)}; process noise per s: {q}; values from {self.source}")

    @classmethod
    def from_ekf_yaml(cls, path: str | Path, node: str = MAP_NODE, *, use_gnss: bool = False) -> FusionConfig:
        """Read the map-frame EKF block of a robot_localization YAML (config/ekf.yaml).

        Inputs are found by topic: the poseN whose topic ends in crossview/pose, the odomN whose
        topic ends in odometry/gps (GNSS through navsat_transform) and the other odomN (wheel
        odometry, twist part). A missing input or a 3-D set-up raises ValueError saying what to fix.
        """
        import yaml

        path = Path(path)
        doc = yaml.safe_load(path.read_text())
        try:
            params = doc[node]["ros__parameters"]
        except (KeyError, TypeError):
            raise ValueError(f"{path} has no {node}: ros__parameters block; point at config/ekf.yaml "
                             "or name the map-frame node") from None
        if params.get("two_d_mode") is not True:
            raise ValueError(f"{path} {node}: two_d_mode must be true; the replay's EKF is planar")
        q = _state_matrix(params.get("process_noise_covariance", list(RL_DEFAULT_PROCESS_NOISE)),
                          f"{node}.process_noise_covariance")
        p0 = _state_matrix(params.get("initial_estimate_covariance", [1e-9] * RL_STATE_SIZE),
                           f"{node}.initial_estimate_covariance")
        x0 = np.zeros(6)
        if "initial_state" in params:
            full = np.asarray(params["initial_state"], dtype=np.float64)
            if full.shape != (RL_STATE_SIZE,):
                raise ValueError(f"{node}.initial_state must hold {RL_STATE_SIZE} values, got {full.size}")
            x0 = full[[RL_INDEX[n] for n in STATE]]

        inputs = {k: str(v) for k, v in params.items() if _is_input_key(k) and isinstance(v, str)}
        heading_keys = [k for k, t in inputs.items() if k.startswith("imu") and t.endswith(HEADING_TOPIC_SUFFIX)]
        if len(heading_keys) > 1:
            raise ValueError(f"{path} {node}: at most one imuN input on .../crossview/heading, found {heading_keys}")
        pose_keys = [k for k, t in inputs.items() if k.startswith("pose") and t.endswith(POSE_TOPIC_SUFFIX)]
        gnss_keys = [k for k, t in inputs.items() if k.startswith("odom") and t.endswith(GNSS_TOPIC_SUFFIX)]
        odom_keys = [k for k, t in inputs.items() if k.startswith("odom") and not t.endswith(GNSS_TOPIC_SUFFIX)]
        for what, keys in (("a poseN input on .../crossview/pose", pose_keys),
                           ("a wheel odometry odomN input", odom_keys)):
            if len(keys) != 1:
                raise ValueError(f"{path} {node} needs exactly one {what}, found {keys or 'none'}")
        if use_gnss and len(gnss_keys) != 1:
            raise ValueError(f"{path} {node}: use_gnss needs one odomN input on .../odometry/gps "
                             f"(navsat_transform), found {gnss_keys or 'none'}")

        def sensor(key: str, threshold_key: str, allowed: Sequence[str]) -> SensorConfig:
            flags = params.get(f"{key}_config")
            if not isinstance(flags, list) or len(flags) != RL_STATE_SIZE:
                raise ValueError(f"{node}.{key}_config must be a list of {RL_STATE_SIZE} booleans")
            chosen = tuple(n for n in STATE if flags[RL_INDEX[n]] and n in allowed)
            if not chosen:
                raise ValueError(f"{node}.{key}_config selects none of {list(allowed)}; nothing to fuse")
            threshold = float(params.get(threshold_key, math.inf))
            return SensorConfig(chosen, threshold, inputs[key])

        odom = sensor(odom_keys[0], f"{odom_keys[0]}_twist_rejection_threshold", ("vx", "vy", "vyaw"))
        pose = sensor(pose_keys[0], f"{pose_keys[0]}_rejection_threshold", ("x", "y", "yaw"))
        gnss = (sensor(gnss_keys[0], f"{gnss_keys[0]}_pose_rejection_threshold", ("x", "y")) if gnss_keys
                else cls.__dataclass_fields__["gnss"].default)
        heading = (sensor(heading_keys[0], f"{heading_keys[0]}_pose_rejection_threshold", ("yaw",)) if heading_keys
                   else None)
        if heading is not None and "yaw" in pose.variables:
            raise ValueError(f"{path} {node}: {pose_keys[0]}_config fuses the yaw and {heading_keys[0]} fuses the "
                             "same heading again (crossview/pose carries the yaw of crossview/heading): set yaw "
                             f"false in {pose_keys[0]}_config so the heading is counted once, under its own gate")
        return cls(process_noise_per_s=q, initial_covariance=p0, initial_state=x0, odom=odom, pose=pose,
                   gnss=gnss, heading=heading, use_gnss=use_gnss, source=f"{path.name} ({node})")


def _is_input_key(key: str) -> bool:
    for prefix in ("odom", "pose", "twist", "imu"):
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            return True
    return False


def _state_matrix(values: Sequence[float], name: str) -> np.ndarray:
    """robot_localization's 15 (diagonal) or 225 (row-major) values -> the planar (6, 6) block."""
    try:  # float() also reads "1e8", which YAML 1.1 (PyYAML) leaves a string but ROS 2 reads as a double
        a = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a list of numbers: {exc}") from None
    if a.size == RL_STATE_SIZE:
        a = np.diag(a)
    elif a.size == RL_STATE_SIZE ** 2:
        a = a.reshape(RL_STATE_SIZE, RL_STATE_SIZE)
    else:
        raise ValueError(f"{name} must hold {RL_STATE_SIZE} or {RL_STATE_SIZE ** 2} values, got {a.size}")
    idx = [RL_INDEX[n] for n in STATE]
    return a[np.ix_(idx, idx)]


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Measurement:
    """One input message reduced to what the planar filter uses."""

    stamp_s: float
    kind: str  # "odom" | "pose" | "gnss" | "heading"
    values: Mapping[str, float]  # measured state variables -> value (m, rad, m/s, rad/s)
    covariance: np.ndarray  # (k, k) in the order of `values`

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(self.values)


def odometry_twist(stamp_s: float, vx_mps: float, vy_mps: float, vyaw_radps: float,
                   twist_covariance: Sequence[float]) -> Measurement:
    """nav_msgs/Odometry twist (base_link) with its 6x6 row-major covariance."""
    c = np.asarray(twist_covariance, dtype=np.float64).reshape(6, 6)[np.ix_([0, 1, 5], [0, 1, 5])]
    return Measurement(stamp_s, "odom", {"vx": vx_mps, "vy": vy_mps, "vyaw": vyaw_radps}, c)


def pose_with_covariance(stamp_s: float, x_m: float, y_m: float, yaw_rad: float,
                         pose_covariance: Sequence[float]) -> Measurement:
    """geometry_msgs/PoseWithCovariance in the world frame; the yaw is left out when its variance
    is UNKNOWN_YAW_VARIANCE_RAD2 or more (the node's 'no heading' marker is 1e6)."""
    full = np.asarray(pose_covariance, dtype=np.float64).reshape(6, 6)
    idx = [0, 1, 5] if full[5, 5] < UNKNOWN_YAW_VARIANCE_RAD2 else [0, 1]
    values = {"x": x_m, "y": y_m, "yaw": yaw_rad} if len(idx) == 3 else {"x": x_m, "y": y_m}
    return Measurement(stamp_s, "pose", values, full[np.ix_(idx, idx)])


def heading_yaw(stamp_s: float, yaw_rad: float, yaw_variance_rad2: float) -> Measurement:
    """sensor_msgs/Imu orientation used as a yaw input (crossview/heading: ENU yaw and its variance)."""
    return Measurement(stamp_s, "heading", {"yaw": yaw_rad}, np.array([[float(yaw_variance_rad2)]]))


def gnss_position(stamp_s: float, x_m: float, y_m: float, covariance_en_m2: Any) -> Measurement:
    """A GNSS fix already in the world frame (navsat_transform's odometry/gps): x, y and 2x2 covariance."""
    return Measurement(stamp_s, "gnss", {"x": x_m, "y": y_m}, np.asarray(covariance_en_m2, float)[:2, :2])


# --------------------------------------------------------------------------- the filter


class _ConstantVelocityEKF(ExtendedKalmanFilter):
    """filterpy's EKF with robot_localization's nonlinear omnidirectional motion model."""

    dt_s = 0.0

    def predict_x(self, u: Any = 0) -> None:
        x, y, yaw, vx, vy, vyaw = self.x[:, 0]
        c, s, dt = math.cos(yaw), math.sin(yaw), self.dt_s
        self.x = np.array([[x + (c * vx - s * vy) * dt], [y + (s * vx + c * vy) * dt], [wrap_rad(yaw + vyaw * dt)],
                           [vx], [vy], [vyaw]])


def transition_jacobian(state: np.ndarray, dt_s: float) -> np.ndarray:
    """d f / d state of the motion model at `state` (6,) over dt_s."""
    _, _, yaw, vx, vy, _ = state
    c, s = math.cos(yaw), math.sin(yaw)
    f = np.eye(6)
    f[0, 2] = (-s * vx - c * vy) * dt_s
    f[0, 3], f[0, 4] = c * dt_s, -s * dt_s
    f[1, 2] = (c * vx - s * vy) * dt_s
    f[1, 3], f[1, 4] = s * dt_s, c * dt_s
    f[2, 5] = dt_s
    return f


@dataclass(frozen=True)
class UpdateResult:
    accepted: bool
    mahalanobis_d2: float  # squared Mahalanobis distance of the innovation (0 for the initialising one)
    variables: tuple[str, ...]  # the state variables this measurement updated (or would have)


class PlanarEKF:
    """The planar EKF; feed measurements in stamp order (update() predicts to each stamp first)."""

    def __init__(self, config: FusionConfig | None = None) -> None:
        self.config = config or FusionConfig()
        self._ekf = _ConstantVelocityEKF(dim_x=6, dim_z=3)
        self._ekf.x = self.config.initial_state.reshape(6, 1).copy()
        self._ekf.P = self.config.initial_covariance.copy()
        self.stamp_s: float | None = None
        self.initialized = False
        self.position_known = False  # a pose or GNSS measurement has been fused

    @property
    def state(self) -> np.ndarray:
        """(6,) [x, y, yaw, vx, vy, vyaw]."""
        return self._ekf.x[:, 0].copy()

    @property
    def covariance(self) -> np.ndarray:
        return self._ekf.P.copy()

    def predict_to(self, stamp_s: float) -> None:
        """Propagate the state to stamp_s (no-op for a stamp at or before the filter's)."""
        if self.stamp_s is None:
            self.stamp_s = float(stamp_s)
            return
        dt = float(stamp_s) - self.stamp_s
        if not dt > 0.0:
            return
        ekf = self._ekf
        ekf.dt_s = dt
        ekf.F = transition_jacobian(ekf.x[:, 0], dt)
        ekf.Q = self.config.process_noise_per_s * dt
        ekf.predict()
        self.stamp_s = float(stamp_s)

    def update(self, m: Measurement) -> UpdateResult:
        """Predict to the measurement's stamp, gate it, fuse it; returns whether it was accepted."""
        sensor = self.config.sensor(m.kind)
        if sensor is None:  # an input the configuration does not fuse
            return UpdateResult(False, math.nan, ())
        names = tuple(n for n in STATE if n in sensor.variables and n in m.values)
        if not names:
            return UpdateResult(False, math.nan, names)
        order = [m.variables.index(n) for n in names]
        z = np.array([[float(m.values[n])] for n in names])
        r = np.asarray(m.covariance, dtype=np.float64)[np.ix_(order, order)].copy()
        r[np.diag_indices_from(r)] = np.maximum(np.diag(r), MIN_VARIANCE)
        idx = [_IX[n] for n in names]
        self.predict_to(m.stamp_s)
        ekf = self._ekf
        if not self.initialized:
            ekf.x[idx, 0] = z[:, 0]
            ekf.P[np.ix_(idx, idx)] = r
            ekf.x[YAW, 0] = wrap_rad(float(ekf.x[YAW, 0]))
            self.initialized = True
            self.position_known |= "x" in names
            return UpdateResult(True, 0.0, names)

        h = np.zeros((len(idx), 6))
        h[np.arange(len(idx)), idx] = 1.0
        angle_rows = [k for k, n in enumerate(names) if n in ANGLES]

        def residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            y = a - b
            for k in angle_rows:
                y[k, 0] = wrap_rad(float(y[k, 0]))
            return y

        y = residual(z, h @ ekf.x)
        s = h @ ekf.P @ h.T + r
        d2 = float(y[:, 0] @ np.linalg.solve(s, y[:, 0]))
        if d2 >= sensor.rejection_threshold ** 2:
            return UpdateResult(False, d2, names)
        ekf.update(z, lambda x: h, lambda x: h @ x, R=r, residual=residual)
        ekf.x[YAW, 0] = wrap_rad(float(ekf.x[YAW, 0]))
        ekf.P = 0.5 * (ekf.P + ekf.P.T)
        self.position_known |= "x" in names
        return UpdateResult(True, d2, names)


# --------------------------------------------------------------------------- a whole track


@dataclass
class FusedTrack:
    """The filter's state at each query stamp (NaN before the first position measurement)."""

    stamp_s: np.ndarray  # (N,) query stamps
    x_m: np.ndarray  # (N,) world frame
    y_m: np.ndarray
    yaw_rad: np.ndarray
    covariance_xy_m2: np.ndarray  # (N, 2, 2)
    accepted: dict[str, int]  # per kind: measurements fused
    rejected: dict[str, int]  # per kind: measurements refused by the Mahalanobis gate
    config: FusionConfig

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected),
                "use_gnss": self.config.use_gnss, "description": self.config.describe()}


def fuse_track(measurements: Iterable[Measurement], query_stamps_s: Sequence[float],
               config: FusionConfig | None = None) -> FusedTrack:
    """Run the filter over measurements in stamp order and read the state at each query stamp.

    At equal stamps measurements come first, so the pose of a panorama counts at its own stamp.
    GNSS measurements are skipped unless config.use_gnss.
    """
    config = config or FusionConfig()
    ekf = PlanarEKF(config)
    kinds_used = ({"odom", "pose"} | ({"gnss"} if config.use_gnss else set())
                  | ({"heading"} if config.heading is not None else set()))
    ms = sorted((m for m in measurements if m.kind in kinds_used), key=lambda m: m.stamp_s)
    queries = np.asarray(query_stamps_s, dtype=np.float64)
    order = np.argsort(queries, kind="stable")
    n = len(queries)
    out_x, out_y, out_yaw = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    out_cov = np.full((n, 2, 2), np.nan)
    accepted = {k: 0 for k in KINDS}
    rejected = {k: 0 for k in KINDS}
    i = 0
    for q in order:
        t = queries[q]
        while i < len(ms) and ms[i].stamp_s <= t:
            result = ekf.update(ms[i])
            if result.variables:
                (accepted if result.accepted else rejected)[ms[i].kind] += 1
            i += 1
        if ekf.position_known:
            ekf.predict_to(t)
            s, p = ekf.state, ekf.covariance
            out_x[q], out_y[q], out_yaw[q] = s[0], s[1], s[2]
            out_cov[q] = p[:2, :2]
    while i < len(ms):  # count the rest, so the totals cover every input
        result = ekf.update(ms[i])
        if result.variables:
            (accepted if result.accepted else rejected)[ms[i].kind] += 1
        i += 1
    return FusedTrack(queries.copy(), out_x, out_y, out_yaw, out_cov, accepted, rejected, config)


def with_gnss(config: FusionConfig, use_gnss: bool) -> FusionConfig:
    """The same configuration with the GNSS switch set."""
    return dataclasses.replace(config, use_gnss=use_gnss)
