"""Top-down correlation model (crossview_training.bev) and its runtime matcher (crossview_ros.matchers.bev_grid):
projection and rotation geometry on hand-computed cases, tile scores against brute force, resume,
export parity, and the matcher recovering a known pose from a planted kernel."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from crossview_training import bev as B  # noqa: E402
from crossview_training.bev import model as bev_model  # noqa: E402

TINY = dict(pano_size=(32, 64), tile_px=32, tile_size_m=16.0, kernel_cells=4, channels=8, feature_dim=4)


def tiny_model(seed: int = 0) -> B.BevModel:
    torch.manual_seed(seed)
    return B.BevModel(B.BevConfig(**TINY)).eval()


def test_ground_point_straight_ahead_samples_column_zero_at_its_depression():
    cfg = B.BevConfig(pano_size=(180, 360), tile_px=64, tile_size_m=32.0, kernel_cells=8, camera_height_m=2.0)
    grid = B.bev_sampling_grid(cfg)[0]  # (S, S, 2), S = 32 px of 0.5 m
    s = grid.shape[0]
    # the pixel just right of centre, far ahead: row 0, col s/2 -> x = +0.25 m, y = 7.75 m
    gx, gy = grid[0, s // 2].tolist()
    x, y = 0.25, (s / 2 - 0.5) * 0.5
    azimuth = math.atan2(x, y)
    col = azimuth / (2 * math.pi) * 360 - 0.5 + 1.0
    row = (math.pi / 2 + math.atan(2.0 / math.hypot(x, y))) / math.pi * 180 - 0.5
    assert gx == pytest.approx((col + 0.5) / 362 * 2 - 1, abs=1e-5)
    assert gy == pytest.approx((row + 0.5) / 180 * 2 - 1, abs=1e-5)
    # behind the camera (bottom row, just right of centre): azimuth just under 180 deg, clockwise
    gx_back = grid[-1, s // 2, 0].item()
    az_back = math.degrees(math.atan2(0.25, -(s / 2 - 0.5) * 0.5))
    assert 175 < az_back < 180
    assert (gx_back + 1) / 2 * 362 - 0.5 == pytest.approx(az_back - 0.5 + 1.0, abs=1e-3)


def test_north_up_rotation_puts_what_is_ahead_where_the_camera_faces():
    model = tiny_model()
    k = model.config.kernel_cells
    feats = torch.zeros(1, 1, k, k)
    feats[0, 0, 0, k // 2 - 1:k // 2 + 1] = 1.0  # a thing straight ahead (top row, centre)
    east = model.north_up(feats, torch.tensor([math.pi / 2]))[0, 0]  # facing east
    assert east[:, -1].sum() > 0.9 * east.sum() > 0  # now on the east (right) edge
    south = model.north_up(feats, torch.tensor([math.pi]))[0, 0]
    assert south[-1, :].sum() > 0.9 * south.sum() > 0  # facing south: bottom edge
    same = model.north_up(feats, torch.tensor([0.0]))[0, 0]
    assert torch.allclose(same, feats[0, 0] * model.mask[0, 0], atol=1e-6)


def test_tile_scores_equal_brute_force_correlation():
    model = tiny_model()
    cfg = model.config
    b, k, c = cfg.block_cells, cfg.kernel_cells, cfg.feature_dim
    rng = np.random.default_rng(0)
    blocks = torch.from_numpy(rng.normal(size=(6, c, b, b)).astype(np.float32))
    tile_rc = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]) * (cfg.tile_px // 2)
    fmap, grid = B.block_mosaic(blocks, tile_rc, cfg.tile_px // 2)
    ground = torch.from_numpy(rng.normal(size=(1, c, k, k)).astype(np.float32)) * model.mask
    best, cell = B.score_blocks(model, ground, fmap, grid)
    padded = np.pad(fmap.numpy(), ((0, 0), (k // 2, k // 2 - 1), (k // 2, k // 2 - 1)))
    g = ground[0].numpy()
    norm = float(model.mask.sum())
    for t, (r, cc) in enumerate(grid):
        scores = np.array([[np.sum(padded[:, i:i + k, j:j + k] * g) / norm for j in range(cc * b, cc * b + b)]
                           for i in range(r * b, r * b + b)])
        assert best[0, t].item() == pytest.approx(scores.max(), abs=1e-5)
        assert tuple(cell[0, t].tolist()) == np.unravel_index(np.argmax(scores), scores.shape)


def test_mosaic_places_each_tile_centre_block_at_its_position():
    cfg = B.BevConfig(**TINY)
    half = cfg.tile_px // 2
    rng = np.random.default_rng(1)
    sats = rng.integers(0, 255, (4, cfg.tile_px, cfg.tile_px, 3), dtype=np.uint8)
    step_m = cfg.tile_size_m / 2

    class Split:
        cities = ("X",)
        sat_city = np.zeros(4, int)

    sat_en = np.array([[500000.0, 4e6], [500000.0 + step_m, 4e6], [500000.0, 4e6 - step_m],
                       [500000.0 + step_m, 4e6 - step_m]])
    mosaic = B.build_mosaics(Split(), sats, sat_en, cfg)[0]
    assert mosaic.image.shape == (2 * half, 2 * half, 3)
    for t in range(4):
        r, c = np.round(mosaic.pixel(sat_en[t])).astype(int)  # the tile centre in mosaic px
        q = half // 2
        np.testing.assert_array_equal(mosaic.image[r - q:r + q, c - q:c + q], sats[t][q:q + half, q:q + half])


@pytest.fixture(scope="module")
def vigor_root(tmp_path_factory):
    from crossview_ros.sim.city import CityConfig
    from crossview_ros.sim.vigor import VigorConfig, write_vigor_dataset

    root = tmp_path_factory.mktemp("bev_vigor")
    cities = {"NewYork": CityConfig(datum_lat_deg=40.7580, datum_lon_deg=-73.9855, size_m=260.0, gsd_m=0.25, seed=31),
              "Chicago": CityConfig(datum_lat_deg=41.8781, datum_lon_deg=-87.6298, size_m=260.0, gsd_m=0.25, seed=32)}
    write_vigor_dataset(root, cities, VigorConfig(panoramas=16, pano_height_px=32, sat_px=64, tile_size_m=40.0,
                                                  seed=5), cross_area_train=["NewYork"], progress=False)
    return root


def test_training_resumes_to_the_same_weights(tmp_path, vigor_root):
    from crossview_training.train import build_config, train

    torch.set_num_threads(1)
    config = build_config("cpu-bev", None, [f"data={vigor_root}", "batch_size=4", "epochs=1", "threads=1",
                                             "time_budget_min=0", "checkpoint_every=2", "rotation_deg=180",
                                             "model_overrides={pano_size: [32, 64], tile_px: 32, kernel_cells: 4, "
                                             "channels: 8, feature_dim: 4}"])
    straight = train(config, tmp_path / "a", progress=False, stop_after_steps=4)
    train(config, tmp_path / "b", progress=False, stop_after_steps=2)
    resumed = train(config, tmp_path / "b", progress=False, stop_after_steps=4)
    a = torch.load(straight, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_max_steps_ends_the_run_and_its_schedule_there(tmp_path, vigor_root):
    """max_steps: the run ends at that step, in the middle of an epoch, its cosine planned to end
    there; two runs of the same config give the same weights (a reference model any machine rebuilds)."""
    from crossview_training.train import build_config, train
    from crossview_training.train_config import lr_at

    torch.set_num_threads(1)
    config = build_config("cpu-bev", None, [f"data={vigor_root}", "batch_size=4", "epochs=3", "threads=1",
                                             "time_budget_min=0", "max_steps=5", "warmup_steps=1",
                                             "model_overrides={pano_size: [32, 64], tile_px: 32, kernel_cells: 4, "
                                             "channels: 8, feature_dim: 4}"])
    first = torch.load(train(config, tmp_path / "a", progress=False), weights_only=False)
    assert first["global_step"] == 5 and first["total_steps"] == 5 and first["epoch"] == 2  # 4 steps an epoch
    last_lr = first["optimizer"]["param_groups"][0]["lr"]  # the lr of step 5 (index 4)
    assert last_lr == pytest.approx(lr_at(4, 5, config.lr, 1, 0.05))  # the cosine planned over 5 steps,
    assert not last_lr == pytest.approx(lr_at(4, 12, config.lr, 1, 0.05))  # not over the 3 epochs' 12
    again = torch.load(train(config, tmp_path / "b", progress=False), weights_only=False)
    for key, value in first["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key


def test_bf16_precision_trains_fp32_weights_under_autocast(tmp_path, vigor_root):
    """precision=bf16: the steps run under bfloat16 autocast (other numbers than fp32's), the weights and
    the optimiser stay fp32 and finite; an unknown precision is refused before anything loads."""
    from crossview_training.train import build_config, train

    torch.set_num_threads(1)
    base = [f"data={vigor_root}", "batch_size=4", "epochs=1", "threads=1", "time_budget_min=0", "max_steps=2",
            "model_overrides={pano_size: [32, 64], tile_px: 32, kernel_cells: 4, channels: 8, feature_dim: 4}"]
    runs = {p: torch.load(train(build_config("cpu-bev", None, [*base, f"precision={p}"]), tmp_path / p,
                                progress=False), weights_only=False)["state_dict"] for p in ("fp32", "bf16")}
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in runs["bf16"].values()
               if v.is_floating_point())
    assert any(not torch.equal(runs["bf16"][k], runs["fp32"][k]) for k in runs["fp32"])
    with pytest.raises(ValueError, match="precision must be one of"):
        build_config("cpu-bev", None, [*base, "precision=fp16"])


@pytest.fixture(scope="module")
def bev_export(tmp_path_factory):
    from crossview_training.export import export_onnx

    out = tmp_path_factory.mktemp("bev") / "model"
    torch.set_num_threads(1)
    export_onnx(tiny_model(3), out)
    return out


def test_export_parity_and_engine(bev_export):
    import json

    from crossview_ros.engines import OnnxEngine
    from crossview_ros.model_meta import BEV_GRAPHS

    meta = json.loads((bev_export / "model.json").read_text())
    assert meta["matching"]["kind"] == "bev" and set(meta["onnx"]["files"]) == set(BEV_GRAPHS)
    for outs in meta["parity"]["files"].values():
        assert all(v["max_abs_err"] < 1e-4 for v in outs.values())
    engine = OnnxEngine(bev_export, threads=1)
    model = tiny_model(3)
    x = torch.randn(2, 3, *model.config.pano_size)
    desc, feats = engine.encode_ground(x.numpy())
    with torch.no_grad():
        want = model.ground_features(x)
    np.testing.assert_allclose(feats, want.numpy(), atol=1e-5)
    assert desc.shape == (2, int(np.prod(want.shape[1:])))
    with pytest.raises(ValueError, match="match needs"):
        engine.match(feats, np.zeros((1, 4, 2, 2), np.float32))


def planted_scope(engine, bearing_quarter_turns: int, true_ij: tuple[int, int], seed: int = 0):
    """A 3 x 3 tile scope of smooth random unit features (like a CNN's: neighbouring cells alike, so
    the stride-2 coarse search sees the peak) and a ground kernel cut from it at true_ij, turned
    into the camera frame of a camera facing bearing_quarter_turns x 90 deg."""
    from scipy.ndimage import gaussian_filter

    from crossview_ros.matchers import bev_grid as bev_match

    meta = engine.meta.bev
    k, b = int(meta["kernel_cells"]), int(meta["block_cells"])
    c = engine.meta.ground_features[0]
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(c, 3 * b, 3 * b)), sigma=(0, 1.0, 1.0), mode="wrap")
    field /= np.linalg.norm(field, axis=0, keepdims=True)
    blocks = field.reshape(c, 3, b, 3, b).transpose(1, 3, 0, 2, 4).reshape(9, c, b, b).astype(np.float32)
    block_m = b * float(meta["cell_m"])
    easting = 300000.0 + block_m * np.tile(np.arange(3), 3)
    northing = 5e6 - block_m * np.repeat(np.arange(3), 3)
    rows = blocks.reshape(9, -1) / b  # as the tile set stores them: L2-normalised rows
    smap = bev_match.scope_map(rows, np.arange(9), easting, northing, channels=c, block_cells=b,
                               cell_m=float(meta["cell_m"]))
    i, j = true_ij
    north_up = smap.fmap[:, i - k // 2:i + k // 2, j - k // 2:j + k // 2]
    cam = np.rot90(north_up, bearing_quarter_turns, axes=(1, 2))  # facing east: east comes up front
    cc = np.arange(k) + 0.5 - k / 2
    mask = (np.hypot(cc[:, None], cc[None, :]) <= k / 2).astype(np.float32)
    return smap, np.ascontiguousarray(cam * mask)[None]


def twin_scope(engine, a: tuple[int, int], b: tuple[int, int]):
    """planted_scope's view at corner a, with the map around a copied to b: two places the
    likelihood cannot tell apart."""
    k = int(engine.meta.bev["kernel_cells"])
    smap, ground = planted_scope(engine, 0, a)
    smap.fmap[:, b[0] - k // 2:b[0] + k // 2, b[1] - k // 2:b[1] + k // 2] = \
        smap.fmap[:, a[0] - k // 2:a[0] + k // 2, a[1] - k // 2:a[1] + k // 2]
    return smap, ground


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_matcher_recovers_a_planted_pose(bev_export, turns):
    from crossview_ros.matchers import bev_grid as bev_match
    from crossview_ros.engines import OnnxEngine

    engine = OnnxEngine(bev_export, threads=1)
    smap, ground = planted_scope(engine, turns, (7, 5))
    m = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3)
    want_e, want_n = smap.position(7, 5)
    assert math.hypot(m.easting_m - want_e, m.northing_m - want_n) < 0.5 * smap.cell_m
    assert abs(math.remainder(m.bearing_rad - turns * math.pi / 2, 2 * math.pi)) < math.radians(5)
    assert m.score > 0.9 and m.margin > 0.2
    assert m.tile_id == smap.tile_at(7, 5) and m.tile_ids[0] == m.tile_id


def test_gnss_prior_picks_the_twin_near_the_fix(bev_export):
    """Two identical places (the kernel's cells copied elsewhere): the likelihood cannot tell them
    apart; a Gaussian prior on either picks that one, and the margin is at most the prior's
    log-density gap in score units, -(0 - d^2 / (2 sigma^2)) / logit_scale."""
    from crossview_ros.matchers import bev_grid as bev_match
    from crossview_ros.engines import OnnxEngine

    engine = OnnxEngine(bev_export, threads=1)
    a, b = (4, 4), (8, 8)  # even corners: the coarse pass sees both peaks
    smap, ground = twin_scope(engine, a, b)
    pos = {name: smap.position(*ij) for name, ij in (("a", a), ("b", b))}
    gap_m = math.dist(pos["a"], pos["b"])
    twins = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3)
    assert abs(twins.margin) < 1e-4  # a tie without the prior
    sigma = 6.0
    for near, far in (("a", "b"), ("b", "a")):
        prior = bev_match.Prior(*pos[near], np.eye(2) * sigma ** 2)
        m = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, prior=prior)
        assert math.dist((m.easting_m, m.northing_m), pos[near]) < 0.5 * smap.cell_m, near
        assert m.score > 0.9  # the score stays the likelihood's
        gap = 0.5 * gap_m ** 2 / sigma ** 2 / float(engine.meta.bev["logit_scale"])
        assert 0.0 < m.margin <= gap + 1e-4
        assert prior.log_density(*pos[far]) == pytest.approx(-0.5 * gap_m ** 2 / sigma ** 2)


def test_track_breaks_the_tie_between_twins_and_lets_go_for_a_clear_view(bev_export):
    """Twin places tie on the likelihood alone. The last frame's belief near one of them decides
    (no GNSS prior at all); a view that clearly fits elsewhere wins over a track with a large
    uniform share and loses to one with almost none, as the mixture says it should."""
    from crossview_ros.matchers import bev_grid as bev_match
    from crossview_ros.engines import OnnxEngine

    engine = OnnxEngine(bev_export, threads=1)
    a, b = (4, 4), (8, 8)
    smap, ground = twin_scope(engine, a, b)
    pos = {"a": smap.position(*a), "b": smap.position(*b)}
    for near in ("a", "b"):
        first = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3,
                                      prior=bev_match.Prior(*pos[near], np.eye(2) * 4.0))
        belief = first.belief
        assert belief.log_p.shape == (math.ceil(smap.fmap.shape[1] / 2), math.ceil(smap.fmap.shape[2] / 2))
        assert np.exp(belief.log_p).sum() == pytest.approx(1.0, rel=1e-5)
        second = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3,
                                       track=belief.predict(smap.cell_m, 0.05))
        assert math.dist((second.easting_m, second.northing_m), pos[near]) < 0.5 * smap.cell_m, near
        assert second.margin > 0.0
    # the belief at b (the last one), and a view that fits only another place c (a fresh scope map)
    smap2, ground_c = planted_scope(engine, 0, (10, 10), seed=1)
    sticky = first.belief.predict(smap.cell_m, 1e-12)
    loose = first.belief.predict(smap.cell_m, 0.99)
    stay = bev_match.match_scope(engine, ground_c, smap2, exclusion_m=5.0, top_k=3, track=sticky)
    go = bev_match.match_scope(engine, ground_c, smap2, exclusion_m=5.0, top_k=3, track=loose)
    assert math.dist((go.easting_m, go.northing_m), smap2.position(10, 10)) < 0.5 * smap.cell_m
    assert math.dist((stay.easting_m, stay.northing_m), pos["b"]) < 3 * smap.cell_m


def test_the_moved_belief_is_a_smooth_mixture_centred_where_odometry_carries_it():
    """A belief holding one grid position, moved by a shift that is no multiple of the grid's spacing and
    spread by sigma: the prior at any position is (1 - u) of a Gaussian about the moved position (per grid
    position: the Gaussian sampled on the grid sums to one) plus the uniform floor u / (positions), by hand;
    on a lattice the same numbers as position by position; its peak is the moved position, not a grid
    position (a prior interpolated from the grid would hold the pose on the grid while the platform moves)."""
    from crossview_ros.matchers.bev_grid import Belief

    spacing, sigma, u = 4.0, 5.0, 0.05
    log_p = np.full((7, 9), -np.inf)
    log_p[3, 4] = 0.0
    log_p[0, 0] = np.log(1e-300)  # a second finite position: the floor is u / 2
    belief = Belief(log_p, 1000.0, 2000.0, spacing)
    prior = belief.predict(sigma, u, shift_e_m=1.3, shift_n_m=-2.9)
    centre_e, centre_n = 1000.0 + 4 * spacing + 1.3, 2000.0 - 3 * spacing - 2.9
    k = np.arange(-20, 21)
    norm = np.sum(np.exp(-0.5 * (k * spacing / sigma) ** 2)) ** 2
    rng = np.random.default_rng(0)
    east, north = centre_e + rng.uniform(-15, 15, 50), centre_n + rng.uniform(-15, 15, 50)
    want = np.log((1 - u) * np.exp(-0.5 * ((east - centre_e) ** 2 + (north - centre_n) ** 2) / sigma ** 2) / norm + u / 2)
    np.testing.assert_allclose(prior.log_density(east, north), want, rtol=1e-9)
    e_line, n_line = centre_e + np.linspace(-10, 10, 81), centre_n + np.linspace(-10, 10, 61)
    lattice = prior.log_density(e_line[None, :], n_line[:, None])
    np.testing.assert_allclose(lattice, prior.log_density(*np.meshgrid(e_line, n_line)), rtol=1e-12)
    i, j = np.unravel_index(int(np.argmax(lattice)), lattice.shape)
    assert (e_line[j], n_line[i]) == pytest.approx((centre_e, centre_n), abs=1e-9)


def test_likelihood_weight_scales_the_evidence_against_the_prior(bev_export):
    """A view that fits place a, a GNSS prior centred on place b: the posterior compares
    w (s_a - s_b) with the prior's gap g in score units, so with g set to half the likelihood gap,
    weight 1 keeps a and weight 0.3 moves to b. Without a prior the weight scales margin and belief."""
    from crossview_ros.matchers import bev_grid as bev_match
    from crossview_ros.engines import OnnxEngine

    engine = OnnxEngine(bev_export, threads=1)
    scale = float(engine.meta.bev["logit_scale"])
    a, b = (4, 4), (10, 10)
    smap, ground = planted_scope(engine, 0, a)
    pos = {"a": smap.position(*a), "b": smap.position(*b)}
    free = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3)
    at_b = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3,
                                 prior=bev_match.Prior(*pos["b"], np.eye(2) * 0.01))
    assert math.dist((at_b.easting_m, at_b.northing_m), pos["b"]) < 0.5 * smap.cell_m
    gap_m = math.dist(pos["a"], pos["b"])
    g = 0.5 * (free.score - at_b.score)  # the prior's penalty at a, score units
    prior = bev_match.Prior(*pos["b"], np.eye(2) * gap_m ** 2 / (2 * g * scale))
    picked = {w: bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, prior=prior,
                                       likelihood_weight=w) for w in (1.0, 0.3)}
    assert math.dist((picked[1.0].easting_m, picked[1.0].northing_m), pos["a"]) < 0.5 * smap.cell_m
    low = (picked[0.3].easting_m, picked[0.3].northing_m)  # near b: the prior is broad, the field smooth
    assert math.dist(low, pos["b"]) < 0.5 * math.dist(low, pos["a"])
    half = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, likelihood_weight=0.5)
    assert (half.easting_m, half.northing_m) == (free.easting_m, free.northing_m) and half.score == free.score
    assert half.margin == pytest.approx(0.5 * free.margin, rel=1e-5)
    finite = np.isfinite(free.belief.log_p)
    np.testing.assert_array_equal(np.isfinite(half.belief.log_p), finite)
    tempered = 0.5 * free.belief.log_p[finite]
    np.testing.assert_allclose(half.belief.log_p[finite], tempered - np.log(np.exp(tempered).sum()), atol=1e-6)
    with pytest.raises(ValueError, match="likelihood_weight"):
        bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, likelihood_weight=0.0)


def bev_world(bev_export, tmp_path):
    """An 80 m orthophoto cut into 16 m tiles encoded with the tiny model, its centre (lat, lon) and
    a smooth random panorama: (orthophoto, tile folder, TileSet, lat, lon, panorama)."""
    import cv2

    from crossview_ros import geo, tiles_cli
    from crossview_ros.sim.coord_ortho import write_coordinate_geotiff
    from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set

    tif = write_coordinate_geotiff(tmp_path / "ortho.tif", crs="EPSG:3857", gsd_m=0.5, centre_lat_deg=48.2,
                                   centre_lon_deg=16.37, size_m=80.0, kind="rgb")
    tile_dir = build_tile_set([tif], tmp_path / "set", TilingConfig(tile_size_m=16.0, tile_px=32), progress=False)
    tiles_cli.encode_tile_set(tile_dir, bev_export, engine="onnxruntime", threads=1, progress=False)
    tiles = TileSet.open(tile_dir)
    lat, lon = geo.utm_to_latlon(float(tiles.easting_m.mean()), float(tiles.northing_m.mean()), tiles.zone)
    pano = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8), (5, 5), 1)
    return tif, tile_dir, tiles, lat, lon, pano


def test_localizer_stream_track_and_reset(bev_export, tmp_path):
    """On a stream the second frame of the same view and fix (a new one, same place) is sharper (its belief holds the first
    frame's evidence); with track off, or after reset(), a frame is exactly the first one again. The likelihood
    weight applies to every tracked frame, the first one too."""
    from crossview_ros.estimate import Fix
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, _, lat, lon, pano = bev_world(bev_export, tmp_path)

    def frames(track: bool, reset_before_third: bool = False, weight: float = 1.0, sigma_m: float = 8.0):
        loc = Localizer(LocalizerConfig(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime",
                                        engine_threads=1, max_mahalanobis=1e6, scope_min_m=20.0, track=track,
                                        track_likelihood_weight=weight, min_mode_mass=0.0, min_imagery_support=0.0))
        out = []
        for t in (10.0, 10.5, 11.0):
            if t == 11.0 and reset_before_third:
                loc.reset()
            out.append(loc.localize(pano, Fix(float(lat), float(lon), t, sigma_m=sigma_m), t, encoding="rgb8", now_s=t))
        loc.close()
        return out

    alone = frames(track=False)
    assert all(e.accepted for e in alone)
    assert alone[0].easting_m == alone[1].easting_m == alone[2].easting_m
    assert alone[0].margin == pytest.approx(alone[1].margin) and alone[0].spread_m == pytest.approx(alone[1].spread_m)
    tracked = frames(track=True)
    assert tracked[0].margin == pytest.approx(alone[0].margin)  # the first frame has no track yet
    assert tracked[1].spread_m < tracked[0].spread_m  # the same view again: a sharper posterior
    reset = frames(track=True, reset_before_third=True)
    assert reset[2].margin == pytest.approx(alone[0].margin) and reset[2].easting_m == alone[0].easting_m
    # a fix too vague to matter in the 20 m scope: the first frame's margin is the likelihood's, weighted
    vague, tempered = frames(track=True, sigma_m=1e4), frames(track=True, weight=0.5, sigma_m=1e4)
    assert tempered[0].easting_m == vague[0].easting_m
    assert tempered[0].margin == pytest.approx(0.5 * vague[0].margin, rel=1e-3)


def test_localizer_with_a_bev_model(bev_export, tmp_path):
    from crossview_ros import geo, tiles_cli
    from crossview_ros.estimate import Fix, LocalizerError, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig
    from crossview_ros.tiles import TilingConfig, build_tile_set

    tif, tile_dir, tiles, lat, lon, pano = bev_world(bev_export, tmp_path)
    # an untrained model on random imagery: its posterior is spread over the scope and its view points anywhere,
    # so the AMBIGUOUS and MISMATCH gates are off here
    config = LocalizerConfig(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime", engine_threads=1,
                             heading=True, max_mahalanobis=1e6, scope_min_m=20.0, min_mode_mass=0.0,
                             yaw_max_flip_mass=1.0, min_imagery_support=0.0)
    loc = Localizer(config)
    est = loc.localize(pano, Fix(float(lat), float(lon), 10.0, sigma_m=8.0), 10.0, encoding="rgb8", now_s=10.0)
    assert est.accepted and est.reason is Reason.OK and est.yaw_enu_rad is not None
    assert geo.distance_m(lat, lon, est.lat_deg, est.lon_deg) <= est.scope_radius_m + 16.0
    # the chosen tile's central block (half a tile) holds the estimate
    assert max(abs(est.offset_m[0]), abs(est.offset_m[1])) <= 4.0 + 1e-6
    assert est.easting_m - tiles.easting_m[est.tile_id] == pytest.approx(est.offset_m[0])
    bad = loc.localize(b"\xff\xd8 not a jpeg", Fix(float(lat), float(lon), 11.0, sigma_m=8.0), 11.0, now_s=11.0)
    assert bad.reason is Reason.BAD_IMAGE and not bad.has_position
    wrong = build_tile_set([tif], tmp_path / "wrong", TilingConfig(tile_size_m=24.0, tile_px=32), progress=False)
    tiles_cli.encode_tile_set(wrong, bev_export, engine="onnxruntime", threads=1, progress=False)
    with pytest.raises(LocalizerError, match="cut the tiles at the model's size"):
        Localizer(LocalizerConfig(tile_set=str(wrong), model=str(bev_export), engine="onnxruntime"))


@pytest.mark.parametrize("direct_max_kernel", [0, bev_model.DIRECT_MAX_KERNEL])  # by FFT, by direct convolution
def test_correlation_equals_direct_convolution_both_ways(direct_max_kernel, monkeypatch):
    monkeypatch.setattr(bev_model, "DIRECT_MAX_KERNEL", direct_max_kernel)
    model = tiny_model()
    k, c = model.config.kernel_cells, model.config.feature_dim
    gen = torch.Generator().manual_seed(2)
    ground = torch.randn(3, c, k, k, generator=gen) * model.mask
    aerial = torch.randn(2, c, 11, 9, generator=gen)  # not square, odd: no wrap-around may show
    direct = F.conv2d(aerial, ground) / model.mask.sum()
    got = model.correlate(ground, aerial)
    assert got.shape == direct.shape == (2, 3, 11 - k + 1, 9 - k + 1)
    assert torch.allclose(got, direct, atol=1e-5)


def test_direct_correlation_runs_in_float32_under_autocast_with_the_fft_gradients(monkeypatch):
    """Training autocasts to bfloat16 and the aerial CNN hands over a channels-last map: the direct way
    still correlates in float32, with the FFT's numbers and gradients."""
    model = tiny_model()
    k, c = model.config.kernel_cells, model.config.feature_dim
    gen = torch.Generator().manual_seed(5)
    ground = (torch.randn(4, c, k, k, generator=gen) * model.mask).requires_grad_()
    aerial = torch.randn(1, c, 23, 23, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.correlate(ground, aerial)
    assert got.dtype == torch.float32
    weights = torch.randn(got.shape, generator=gen)
    (got * weights).sum().backward()
    grads = ground.grad.clone(), aerial.grad.clone()
    ground.grad = aerial.grad = None
    monkeypatch.setattr(bev_model, "DIRECT_MAX_KERNEL", 0)
    by_fft = model.correlate(ground, aerial)
    (by_fft * weights).sum().backward()
    assert torch.allclose(got, by_fft, atol=1e-5)
    assert torch.allclose(grads[0], ground.grad, atol=1e-4) and torch.allclose(grads[1], aerial.grad, atol=1e-4)


@pytest.mark.parametrize("shift", [0, 8, -21, 64])
def test_stored_view_turned_equals_the_view_of_the_rolled_panorama(shift):
    cfg = B.BevConfig(pano_size=(64, 128), tile_px=64, tile_size_m=32.0, kernel_cells=8)
    rng = np.random.default_rng(3)
    noise = rng.random((1, 64 + 8, 128, 3)) * 255  # smooth, so interpolation differences stay small
    kernel = np.ones(9) / 9
    smooth = np.apply_along_axis(lambda v: np.convolve(np.concatenate([v[-4:], v, v[:4]]), kernel, "valid"), 2, noise)
    pano = np.apply_along_axis(lambda v: np.convolve(v, kernel, "valid"), 1, smooth).astype(np.uint8)
    bank = B.view_bank(cfg, pano)
    assert bank.shape[1] >= math.ceil(cfg.kernel_cells * B.STRIDE * math.sqrt(2))
    model = B.BevModel(cfg)
    rolled = np.roll(pano, shift, axis=2)  # forward bearing changes by -shift x 360 / W
    ref = B.project_ground(torch.from_numpy(rolled).permute(0, 3, 1, 2).float(), model.bev_grid) / 255
    turn = -shift * 2 * math.pi / pano.shape[2]
    got = B.views_at(bank, np.array([turn]), cfg)
    assert got.shape == ref.shape == (1, 3, 32, 32)
    assert float((got - ref).abs().mean()) < 0.01
    assert float((got - ref).abs().max()) < 0.08
    if shift % pano.shape[2] == 0:  # no turn: the central crop of the stored view, exactly
        assert float((got - ref).abs().max()) < 1.5 / 255


@pytest.mark.parametrize("mirror", [0.0, 1.0])
def test_region_batch_targets_each_camera_cell(vigor_root, mirror):
    from crossview_training.datasets import cached_images, load_vigor_split

    cfg = B.BevConfig(pano_size=(32, 64), tile_px=32, tile_size_m=40.0, kernel_cells=4, channels=8, feature_dim=4)
    split = load_vigor_split(vigor_root, "same_train")
    panos, sats = cached_images(split, cfg.pano_size, (cfg.tile_px, cfg.tile_px), progress=False)
    pano_en, sat_en = split.metric_positions()
    mosaics = B.build_mosaics(split, np.asarray(sats), sat_en, cfg)
    bank = B.view_bank(cfg, panos)
    region_px, k = 96, cfg.kernel_cells
    n_pos = region_px // B.STRIDE - k + 1
    rng = np.random.default_rng(4)
    seen = 0
    for _ in range(12):
        state = rng.bit_generator.state
        batch = B.sample_batch(rng, bank, pano_en, split.pano_city, np.arange(len(split)), mosaics, cfg,
                               batch_size=5, region_px=region_px, rotation_deg=0.0, photometric=0.0, mirror=mirror)
        q = len(batch.target)
        assert 2 <= q <= 5 and batch.region.shape == (1, 3, region_px, region_px)
        assert batch.views.shape == (q, 3, k * B.STRIDE, k * B.STRIDE)
        # facing south (VIGOR), mirrored east-west or not: still facing south
        assert torch.allclose(batch.bearing_rad, torch.full((q,), math.pi, dtype=torch.float64))
        # the region is a piece of one city's mosaic (flipped left-right when mirrored): find where
        region = (batch.region[0].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255
        if mirror:
            region = region[:, ::-1]
        city, origin = None, None
        for c, mosaic in mosaics.items():
            img = mosaic.image.astype(np.float64)
            corner = img[:img.shape[0] - region_px + 1, :img.shape[1] - region_px + 1]
            for r0, c0 in np.argwhere(np.abs(corner - region[0, 0]).max(-1) < 0.5):
                if np.abs(img[r0:r0 + region_px, c0:c0 + region_px] - region).max() < 0.5:
                    city, origin = c, np.array([r0, c0])
                    break
            if city is not None:
                break
        assert city is not None, "the region is not a crop of a mosaic"
        rows, cols = np.divmod(batch.target.numpy(), n_pos)
        in_region = (np.stack([rows, cols], 1) + k / 2) * B.STRIDE  # the position's camera, region px
        if mirror:
            in_region[:, 1] = region_px - in_region[:, 1]
        camera_px = in_region + origin
        # each target is the camera of a panorama of that city, within half a cell per axis, and
        # the batch's view at that place is that panorama's (flipped about its forward axis if mirrored)
        members = np.flatnonzero(split.pano_city == city)
        cams = mosaics[city].pixel(pano_en[members])
        dist = np.abs(camera_px[:, None] - cams[None]).max(-1)
        assert (dist.min(1) <= B.STRIDE / 2 + 1e-6).all()
        expected = B.views_at(bank[members[dist.argmin(1)]], np.zeros(q), cfg)
        expected = B.normalise(expected.flip(-1) if mirror else expected, cfg)
        assert torch.allclose(batch.views, expected, atol=1e-6)
        seen += q
        rng2 = np.random.default_rng(0)
        rng2.bit_generator.state = state
        again = B.sample_batch(rng2, bank, pano_en, split.pano_city, np.arange(len(split)), mosaics, cfg,
                               batch_size=5, region_px=region_px, rotation_deg=0.0, photometric=0.0, mirror=mirror)
        assert torch.equal(again.target, batch.target)  # the RNG alone decides a batch (resume)
    assert seen >= 24


def test_mirrored_world_keeps_the_ground_to_aerial_correspondence():
    """A view flipped about its forward axis, turned north-up with bearing -b, is the mirror image of
    the view turned north-up with b: so a mirrored region still matches at the mirrored camera."""
    model = tiny_model()
    k, c = model.config.kernel_cells, model.config.feature_dim
    ground = torch.randn(3, c, k, k, generator=torch.Generator().manual_seed(5)) * model.mask
    bearing = torch.tensor([math.pi, 0.7, 2.0])
    mirrored = model.north_up(ground.flip(-1), torch.remainder(-bearing, 2 * math.pi))
    assert torch.allclose(mirrored, model.north_up(ground, bearing).flip(-1), atol=1e-5)


def test_twins_split_the_posterior_and_their_distance_is_in_the_far_covariance(bev_export):
    """Two places the likelihood cannot tell apart: each holds about half the posterior, so the mode
    within a radius smaller than their distance has about half the mass, and the rest of the mass
    sits one twin-distance away: far covariance ~ (1 - mode_mass) d d^T (the mixture's second moment)."""
    from crossview_ros.engines import OnnxEngine
    from crossview_ros.matchers import bev_grid as bev_match

    engine = OnnxEngine(bev_export, threads=1)
    a, b = (4, 4), (10, 10)
    smap, ground = twin_scope(engine, a, b)
    gap = np.subtract(smap.position(*b), smap.position(*a))
    m = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, mode_radius_m=0.4 * np.hypot(*gap))
    assert 0.3 < m.mode_mass < 0.7
    d = gap if math.dist((m.easting_m, m.northing_m), smap.position(*a)) < 1.0 else -gap
    want = (1 - m.mode_mass) * np.outer(d, d)
    np.testing.assert_allclose(m.far_covariance_m2, want, rtol=0.25, atol=0.05 * float(np.abs(want).max()))
    alone, view = planted_scope(engine, 0, a)  # the same view without its twin: one place
    one = bev_match.match_scope(engine, view, alone, exclusion_m=5.0, top_k=3, mode_radius_m=6.0)
    assert one.mode_mass > 0.98 and float(np.abs(one.far_covariance_m2).max()) < 0.02 * float(np.abs(want).max())



def test_bearing_prior_decides_a_weak_view_and_yields_to_a_clear_one(bev_export):
    """Odometry's bearing prior (a wrapped Gaussian plus a uniform share): a clear view facing north keeps
    its bearing against a prior facing south; the same view counted at 5 % (a weak one) takes the
    prior's bearing."""
    from crossview_ros.engines import OnnxEngine
    from crossview_ros.matchers import bev_grid as bev_match

    n_rot = 16
    prior = bev_match.bearing_log_prior(n_rot, math.pi, math.radians(10.0), 0.1)
    assert np.exp(prior).sum() == pytest.approx(1.0)
    assert int(np.argmax(prior)) == n_rot // 2 and np.exp(prior[0]) == pytest.approx(0.1 / n_rot, rel=1e-6)
    with pytest.raises(ValueError, match="bearing_log_prior"):
        bev_match.bearing_log_prior(n_rot, 0.0, 0.0, 0.1)

    engine = OnnxEngine(bev_export, threads=1)
    n_rot = int(engine.meta.bev["rotations"])
    smap, ground = planted_scope(engine, 0, (6, 4))  # on the coarse grid: the coarse search sees the peak
    # 80 % of the prior spread evenly: its peak stands ln(1 + 0.2 / 0.8 x n_rot x ~0.9) nats above the other
    # bearings (0.16 score units at logit_scale 10), less than the clear view's lead over any south-facing pose
    south = bev_match.bearing_log_prior(n_rot, math.pi, math.radians(10.0), 0.8)
    clear = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, bearing_prior=south)
    assert abs(math.remainder(clear.bearing_rad, 2 * math.pi)) < math.radians(5)
    weak = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, bearing_prior=south,
                                 likelihood_weight=0.05)
    assert abs(math.remainder(weak.bearing_rad - math.pi, 2 * math.pi)) < math.radians(5)
    assert clear.bearing_likelihood_rad == pytest.approx(0.0, abs=1e-9)  # the view's own bearing, what votes
    with pytest.raises(ValueError, match="one value per rotation"):
        bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, bearing_prior=south[:-1])


def test_gates_judge_the_posterior_and_the_recent_views(bev_export, tmp_path, monkeypatch):
    """The localizer's integrity gates on a planned sequence of matches (the matcher's pose with the
    view distance and mode mass set by the test): MISMATCH until 2 of the last 4 views point at
    their estimate by themselves, AMBIGUOUS when the mode holds half the posterior, and a published
    covariance that adds the posterior's far mass (10 % of it) to the model's sigma, its protection level
    the Gaussian's radius of it before calibration; a far mass under protection_risk is left out."""
    import dataclasses

    from crossview_ros.covariance import gaussian_protection_scale
    from crossview_ros.estimate import Fix, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, _, lat, lon, pano = bev_world(bev_export, tmp_path)
    loc = Localizer(LocalizerConfig(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime",
                                    engine_threads=1, max_mahalanobis=1e6, scope_min_m=20.0, mode_radius_m=5.0,
                                    min_mode_mass=0.8, imagery_window=4, min_imagery_support=0.5))
    far, near = 20.0, 1.0
    plan = iter([(far, 1.0), (near, 1.0), (near, 0.9), (far, 0.995), (far, 1.0), (far, 1.0), (near, 1.0), (near, 0.5)])
    far_cov = np.array([[40.0, 0.0], [0.0, 10.0]])
    real = loc.matcher.refine_pose

    def planned(ground, candidates):
        distance, mass = next(plan)
        return dataclasses.replace(real(ground, candidates), view_distance_m=distance, mode_mass=mass,
                                   far_covariance_m2=far_cov)

    monkeypatch.setattr(loc.matcher, "refine_pose", planned)
    out = [loc.localize(pano, Fix(float(lat), float(lon), t, sigma_m=8.0), t, encoding="rgb8", now_s=t)
           for t in 10.0 + 0.5 * np.arange(8)]
    M, A, OK = Reason.MISMATCH, Reason.AMBIGUOUS, Reason.OK
    assert [e.reason for e in out] == [M, M, OK, OK, OK, M, M, A]
    assert [e.imagery_support for e in out] == [0.0, 0.25, 0.5, 0.5, 0.5, 0.25, 0.25, 0.5]
    assert all(e.has_position and e.protection_level_m > 0 for e in out)  # gated frames keep what they computed
    ok = out[2]
    sigma = loc.covariance.sigma_m(ok.margin, ok.score, ok.spread_m, math.hypot(*ok.offset_m))
    added = np.linalg.eigvalsh(ok.covariance_enu_m2 - np.eye(2) * sigma ** 2)  # the grid -> ENU turn keeps these
    np.testing.assert_allclose(added, [10.0, 40.0], rtol=1e-9)
    assert ok.protection_level_m == pytest.approx(gaussian_protection_scale(0.01) * math.sqrt(sigma ** 2 + 40.0))
    slight = out[3]  # 0.5 % of the posterior far off, under protection_risk (1 %): not in the covariance
    sigma = loc.covariance.sigma_m(slight.margin, slight.score, slight.spread_m, math.hypot(*slight.offset_m))
    np.testing.assert_allclose(slight.covariance_enu_m2, np.eye(2) * sigma ** 2, rtol=1e-9)
    loc.reset()  # a new stream earns its support again
    plan = iter([(near, 1.0)])
    assert loc.localize(pano, Fix(float(lat), float(lon), 20.0, sigma_m=8.0), 20.0, encoding="rgb8",
                        now_s=20.0).reason is M
    loc.close()


def test_prior_inside_is_the_share_of_the_fix_on_the_tiles(bev_export):
    """The GNSS prior's mass on the scope's tiles, against the Gaussian integrated over the map's
    rectangle (every block has a tile): all of it for a sharp fix in the middle, half for one on the
    west edge, none for one far off (the midpoint rule over the cells)."""
    from scipy.stats import norm

    from crossview_ros.engines import OnnxEngine
    from crossview_ros.matchers import bev_grid as bev_match

    engine = OnnxEngine(bev_export, threads=1)
    smap, ground = planted_scope(engine, 0, (6, 4))
    h, w = smap.fmap.shape[1:]
    (e0, n0), (e1, n1) = smap.position(0, 0), smap.position(h, w)

    def inside(e: float, n: float, sigma_m: float) -> tuple[float, float]:
        prior = bev_match.Prior(e, n, np.eye(2) * sigma_m ** 2)
        got = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3, prior=prior).prior_inside
        want = (norm.cdf((e1 - e) / sigma_m) - norm.cdf((e0 - e) / sigma_m)) * (
            norm.cdf((n0 - n) / sigma_m) - norm.cdf((n1 - n) / sigma_m))
        return got, float(want)

    mid_e, mid_n = smap.position(h / 2, w / 2)
    for e, n, sigma in ((mid_e, mid_n, 3.0), (e0, mid_n, 3.0), (e0, mid_n, 6.0), (mid_e + 8.0, n1, 5.0)):
        got, want = inside(e, n, sigma)
        assert got == pytest.approx(want, abs=0.02), (e - e0, n - n0, sigma)
    assert inside(mid_e, mid_n, 3.0)[0] > 0.97
    assert inside(e0 - 500.0, mid_n, 3.0)[0] < 1e-6
    assert bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3).prior_inside == 1.0


def test_imagery_score_floor_withholds_views_that_score_like_another_place(bev_export, tmp_path, monkeypatch):
    """The MISMATCH gate on the mean best score of the last imagery_window views: a planned run of scores
    against a floor of 0.5 (explicit min_imagery_score, then the same as the calibrated floor with -1,
    and 0 = off), the window mean computed by hand."""
    import dataclasses

    from crossview_ros.covariance import IMAGERY_BEST_SCORE, IMAGERY_OVER_SCOPE_MEDIAN, CovarianceModel
    from crossview_ros.estimate import Fix, LocalizerError, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, _, lat, lon, pano = bev_world(bev_export, tmp_path)
    scores = [0.9, 0.2, 0.3, 0.8, 0.9, 0.1]
    window = 3
    means = [np.mean(scores[max(0, k - window + 1): k + 1]) for k in range(len(scores))]
    expected = [Reason.OK if m >= 0.5 else Reason.MISMATCH for m in means]
    assert expected == [Reason.OK, Reason.OK, Reason.MISMATCH, Reason.MISMATCH, Reason.OK, Reason.OK]

    def run(view_distance_m=50.0, level=0.0, **settings):
        loc = Localizer(LocalizerConfig(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime",
                                        engine_threads=1, max_mahalanobis=1e6, scope_min_m=20.0, min_mode_mass=0.0,
                                        min_imagery_support=0.0, imagery_window=window, mode_radius_m=5.0,
                                        **settings))
        plan = iter(scores)
        real = loc.matcher.refine_pose
        monkeypatch.setattr(loc.matcher, "refine_pose",
                            lambda g, c: dataclasses.replace(real(g, c), score=next(plan) + level, mode_mass=1.0,
                                                             view_distance_m=view_distance_m, scope_median_score=level))
        return loc, [loc.localize(pano, Fix(float(lat), float(lon), t, sigma_m=8.0), t, encoding="rgb8", now_s=t)
                     for t in 10.0 + 0.5 * np.arange(len(scores))]

    loc, out = run(min_imagery_score=0.5)
    assert [e.reason for e in out] == expected
    np.testing.assert_allclose([e.imagery_score for e in out], means)  # what the gate read, and calibration reads
    assert "below the imagery floor 0.500" in out[2].message
    loc.close()
    loc, out = run(min_imagery_score=0.0)
    assert all(e.reason is Reason.OK for e in out)
    loc.close()
    # the statistic is the score over the view's median score in the scope: the same scores 0.3 higher
    # everywhere (a view that scores high at any place) are judged alike
    loc, out = run(level=0.3, min_imagery_score=0.5)
    assert [e.reason for e in out] == expected
    np.testing.assert_allclose([e.imagery_score for e in out], means)
    loc.close()
    # views that keep pointing at their estimate by themselves (support 1 >= imagery_trust_support) are
    # trusted whatever they score; the same scores with views pointing elsewhere are not
    loc, out = run(view_distance_m=1.0, min_imagery_score=0.5, imagery_trust_support=0.7)
    assert all(e.reason is Reason.OK for e in out)
    loc.close()
    loc, out = run(view_distance_m=50.0, min_imagery_score=0.5, imagery_trust_support=0.7)
    assert [e.reason for e in out] == expected
    loc.close()
    loc, out = run(view_distance_m=1.0, min_imagery_score=0.5)  # the default 1: every window is judged
    assert [e.reason for e in out] == expected
    loc.close()
    calibrated = dataclasses.replace(CovarianceModel.from_config(LocalizerConfig()), imagery_score_floor=0.5,
                                     imagery_statistic=IMAGERY_OVER_SCOPE_MEDIAN, calibrated=True)
    monkeypatch.setattr(Localizer, "_load_covariance", lambda self: calibrated)
    loc, out = run()  # min_imagery_score -1: the calibrated floor
    assert loc.imagery.floor == 0.5 and [e.reason for e in out] == expected
    loc.close()
    # a floor fitted on the score alone (older calibration files) is refused, unless min_imagery_score is set
    older = dataclasses.replace(calibrated, imagery_statistic=IMAGERY_BEST_SCORE)
    monkeypatch.setattr(Localizer, "_load_covariance", lambda self: older)
    with pytest.raises(LocalizerError, match="calibrate again"):
        run()
    loc, out = run(min_imagery_score=0.5)
    assert [e.reason for e in out] == expected
    loc.close()


def test_a_stream_that_scores_like_another_place_widens_the_published_covariance(bev_export, tmp_path, monkeypatch):
    """With calibrated imagery Gaussians, each published covariance is the model's plus P(mismatch) x (the
    fix's covariance + the estimate's offset from the fix, squared); P filtered along the stream by hand
    (scipy's logpdf of the window means of planned scores, / imagery_window, from the prior, clamped); the
    Mahalanobis distance to the fix leaves that share out; a reset starts from the prior; prior 0 adds nothing."""
    import dataclasses

    from scipy.special import expit, logit
    from scipy.stats import norm

    from crossview_ros import geo
    from crossview_ros.covariance import IMAGERY_OVER_SCOPE_MEDIAN, CovarianceModel
    from crossview_ros.estimate import Fix, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, _, lat, lon, pano = bev_world(bev_export, tmp_path)
    gaussians = {"imagery_background_mean": 0.2, "imagery_background_std": 0.04, "imagery_own_mean": 0.45,
                 "imagery_own_std": 0.08}
    calibrated = dataclasses.replace(CovarianceModel.from_config(LocalizerConfig()), **gaussians, sigma0_m=1.0,
                                     imagery_statistic=IMAGERY_OVER_SCOPE_MEDIAN, calibrated=True)
    monkeypatch.setattr(Localizer, "_load_covariance", lambda self: calibrated)
    scores = [0.2, 0.25, 0.2, 0.38, 0.36, 0.5, 0.55, 0.6, 0.5, 0.34]
    means = [np.mean(scores[max(0, k - 1): k + 1]) for k in range(len(scores))]  # imagery_window 2
    log_odds, want = 0.0, []
    for m in means:
        log_odds = float(np.clip(log_odds + (norm.logpdf(m, 0.2, 0.04) - norm.logpdf(m, 0.45, 0.08)) / 2,
                                 logit(1e-3), logit(1 - 1e-3)))
        want.append(float(expit(log_odds)))

    def run(prior: float) -> list:
        loc = Localizer(LocalizerConfig(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime",
                                        engine_threads=1, max_mahalanobis=1e6, scope_min_m=20.0, min_mode_mass=0.0,
                                        min_imagery_support=0.0, imagery_window=2, imagery_mismatch_prior=prior,
                                        imagery_mismatch_floor=1e-3))
        real = loc.matcher.refine_pose
        plan = iter(scores + scores[:1])
        monkeypatch.setattr(loc.matcher, "refine_pose", lambda g, c: dataclasses.replace(
            real(g, c), score=next(plan) + 0.1, scope_median_score=0.1, far_covariance_m2=None))
        fix_lat, fix_lon = float(lat) + 1e-4, float(lon)  # the fix ~11 m north of the panorama's place
        out = [loc.localize(pano, Fix(fix_lat, fix_lon, t, sigma_m=8.0), t, encoding="rgb8", now_s=t)
               for t in 10.0 + 0.5 * np.arange(len(scores))]
        loc.reset()
        out.append(loc.localize(pano, Fix(fix_lat, fix_lon, 20.0, sigma_m=8.0), 20.0, encoding="rgb8", now_s=20.0))
        loc.close()
        for e in out:
            assert e.reason is Reason.OK
            sigma = calibrated.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m))
            delta = np.array(geo.offset_enu_m(fix_lat, fix_lon, e.lat_deg, e.lon_deg))
            apart = np.eye(2) * 64.0 + np.outer(delta, delta)
            np.testing.assert_allclose(e.mismatch_covariance_enu_m2, apart, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(e.covariance_enu_m2, np.eye(2) * sigma ** 2 + e.imagery_mismatch * apart,
                                       rtol=1e-9, atol=1e-9)
            d2 = float(delta @ np.linalg.solve(np.eye(2) * (sigma ** 2 + 64.0), delta))
            assert e.mahalanobis_d2 == pytest.approx(d2, rel=1e-9)
        return out

    out = run(0.5)
    np.testing.assert_allclose([e.imagery_score for e in out[:-1]], means, rtol=1e-6)
    np.testing.assert_allclose([e.imagery_mismatch for e in out[:-1]], want, rtol=1e-6)
    assert out[4].imagery_mismatch > 0.5 and out[4].sigma_m > 4.0  # windows at 0.37 after 0.2s: not a 1 m fix
    assert out[9].imagery_mismatch < 0.01 and out[9].sigma_m < 1.0  # 0.42 after 0.5s: its own imagery
    bg, own = 0.5 * norm.pdf(0.2, 0.2, 0.04) ** 0.5, 0.5 * norm.pdf(0.2, 0.45, 0.08) ** 0.5
    assert out[-1].imagery_mismatch == pytest.approx(bg / (bg + own), rel=1e-6)  # after the reset: the prior
    assert all(e.imagery_mismatch == 0.0 for e in run(0.0))


def test_odometry_keeps_a_fix_off_the_edge_from_refusing_a_platform_on_the_tiles(bev_export, tmp_path):
    """min_prior_inside refuses a fix whose uncertainty runs off the tiles (OUTSIDE_COVERAGE): a platform
    beyond them would be put on their edge. When odometry (aligned with the grid, here standing still)
    carries the last published estimate onto the tiles with 2 sigma to spare, the same fix is not refused;
    without odometry, or after reset() (no published estimate), it is. disc_on_tiles on hand numbers."""
    from crossview_ros import geo
    from crossview_ros.estimate import Fix, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig
    from crossview_ros.tiles.coverage import disc_on_tiles

    _, tile_dir, tiles, lat, lon, pano = bev_world(bev_export, tmp_path)
    half = 0.5 * tiles.tile_size_m
    west, mid_n = float(tiles.easting_m.min()) - half, float(tiles.northing_m.mean())  # the tiles' west edge
    mid_e = float(tiles.easting_m.mean())
    assert disc_on_tiles(tiles, mid_e, mid_n, 10.0)
    assert not disc_on_tiles(tiles, west + 5.0, mid_n, 10.0) and disc_on_tiles(tiles, west + 5.0, mid_n, 4.9)
    assert not disc_on_tiles(tiles, west - 0.1, mid_n, 0.0)
    off_lat, off_lon = map(float, geo.utm_to_latlon(west - 8.0, mid_n, tiles.zone))

    def frames(odometry: bool, reset: bool = False) -> list[Reason]:
        loc = Localizer(LocalizerConfig(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime",
                                        engine_threads=1, max_mahalanobis=1e6, scope_min_m=20.0, min_mode_mass=0.0,
                                        min_imagery_support=0.0, min_imagery_score=0.0, odometry=odometry,
                                        covariance_file="none", cov_sigma0_m=1.0, cov_margin_coef=0.0))
        for k in range(31):
            loc.add_odometry(8.0 + 0.1 * k, 0.0, 0.0, 0.0)
        for k in range(4 if odometry else 0):
            loc.odometry.vote_bearing(8.0 + 0.5 * k, 0.0)
        first = loc.localize(pano, Fix(float(lat), float(lon), 10.0, sigma_m=3.0), 10.0, encoding="rgb8", now_s=10.0)
        if reset:
            loc.reset()
        second = loc.localize(pano, Fix(off_lat, off_lon, 10.5, sigma_m=8.0), 10.5, encoding="rgb8", now_s=10.5)
        loc.close()
        return [first.reason, second.reason]

    first, second = frames(odometry=True)
    assert first is Reason.OK and second is not Reason.OUTSIDE_COVERAGE  # the margin gate may still judge it
    assert frames(odometry=False) == [Reason.OK, Reason.OUTSIDE_COVERAGE]
    assert frames(odometry=True, reset=True) == [Reason.OK, Reason.OUTSIDE_COVERAGE]


def test_odometry_overrules_a_fix_that_jumps_away_from_an_estimate_it_agreed_with(bev_export, tmp_path):
    """A multipath jump: the fix agreed with the first estimate, then jumps 25 m away with a 1 m sigma
    while the platform stands still and the view stays the same. Odometry carries the estimate the fix
    agreed with to the second frame; the second estimate lies there, so it is published (fix_overruled
    counts it) although its d^2 to the fix is about 25^2 / 2. Without odometry, with fix_overrule_s 0,
    past fix_overrule_s, or when odometry says the platform moved 20 m (the same view then contradicts
    it), the fix wins: MAHALANOBIS, as before."""
    from crossview_ros import geo
    from crossview_ros.estimate import Fix, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localize_frames import Frame
    from crossview_ros.localize_summary import summarize
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, tiles, lat, lon, pano = bev_world(bev_export, tmp_path)

    def localizer(odometry: bool = True, moved_m: float = 0.0, **overrides) -> Localizer:
        settings = dict(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime", engine_threads=1,
                        match_prior=False, scope_min_m=80.0, min_mode_mass=0.0, min_imagery_support=0.0,
                        min_imagery_score=0.0, min_prior_inside=0.0, odometry=odometry, covariance_file="none",
                        cov_sigma0_m=1.0, cov_margin_coef=0.0, mode_radius_m=1000.0)  # sigma 1 m, no far mass
        loc = Localizer(LocalizerConfig(**{**settings, **overrides}))
        for k in range(401):  # 8 s to 48 s; standing still, or moving moved_m along odom x from 10 s to 10.5 s
            t = 8.0 + 0.1 * k
            loc.add_odometry(t, moved_m * min(max((t - 10.0) / 0.5, 0.0), 1.0), 0.0, 0.0)
        for k in range(4 if odometry else 0):
            loc.odometry.vote_bearing(8.0 + 0.5 * k, 0.0)  # odom x runs grid east
        return loc

    probe = localizer(odometry=False)
    first = probe.localize(pano, Fix(float(lat), float(lon), 10.0, sigma_m=3.0), 10.0, encoding="rgb8", now_s=10.0)
    probe.close()
    east, north = first.easting_m, first.northing_m  # where this view lies whatever the fix (match_prior off)
    towards = np.array([float(tiles.easting_m.mean()) - east, float(tiles.northing_m.mean()) - north])
    towards = towards / np.linalg.norm(towards) if np.linalg.norm(towards) > 5.0 else np.array([1.0, 0.0])
    agreed = Fix(*map(float, geo.utm_to_latlon(east, north, tiles.zone)), 10.0, sigma_m=1.0)
    jumped_e, jumped_n = np.array([east, north]) + 25.0 * towards

    def frames(second_s: float = 10.5, **kwargs) -> tuple[Localizer, list]:
        loc = localizer(**kwargs)
        jumped = Fix(*map(float, geo.utm_to_latlon(jumped_e, jumped_n, tiles.zone)), second_s, sigma_m=1.0)
        out = [loc.localize(pano, agreed, 10.0, encoding="rgb8", now_s=10.0),
               loc.localize(pano, jumped, second_s, encoding="rgb8", now_s=second_s)]
        loc.close()
        return loc, out

    loc, (one, two) = frames()
    assert one.reason is Reason.OK and one.mahalanobis_d2 < 1.0
    assert two.reason is Reason.OK and loc.fix_overruled == 1 and two.fix_overruled and not one.fix_overruled
    panorama_frames = [Frame(Path("pano.png"), None), Frame(Path("pano.png"), None)]  # no truth, no stamps
    assert summarize([one, two], panorama_frames, [agreed, agreed], heading=False)["fix_overruled"] == 1
    assert math.hypot(two.easting_m - east, two.northing_m - north) < 2.0
    assert two.mahalanobis_d2 > 250.0  # 25 m against 1 m (fix) and about 1 m (ours) per axis
    for kwargs in (dict(odometry=False), dict(fix_overrule_s=0.0), dict(second_s=45.0), dict(moved_m=20.0)):
        loc, (one, two) = frames(**kwargs)
        assert (one.reason, two.reason, loc.fix_overruled) == (Reason.OK, Reason.MAHALANOBIS, 0), kwargs


def test_a_first_fix_must_agree_with_the_fixes_over_the_recent_views(bev_export, tmp_path):
    """The same view each frame, its fixes (sigma 1 m, the estimate's 1 m) either on its place or 5 m away:
    d^2 about 25 / 2 = 12.5, under max_mahalanobis 13.8 frame by frame. With nothing published in the
    last imagery_track_s, the recent views' mean d^2 must be at most first_fix_mahalanobis_share (0.3) x
    max_mahalanobis = 4.14. Two frames 5 m off start no stream (MAHALANOBIS, "first fix"); one on the
    place starts it, and the 5 m fixes after it are published (the track carries the stream); after 64 s
    (imagery_track_s 60 s) without a published fix the recent views' mean is 9.4 and the next 5 m frame is
    refused again. A mean under the limit (fixes 1.5 m off, d^2 1.1) publishes at once. A share of 0 turns the gate off,
    and so does a max_mahalanobis loosened past the views' mean (1000: a limit of 300)."""
    from crossview_ros import geo
    from crossview_ros.estimate import Fix, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, tiles, lat, lon, pano = bev_world(bev_export, tmp_path)

    def localizer(**overrides) -> Localizer:
        settings = dict(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime", engine_threads=1,
                        match_prior=False, scope_min_m=80.0, min_mode_mass=0.0, min_imagery_support=0.0,
                        min_imagery_score=0.0, min_prior_inside=0.0, covariance_file="none", cov_sigma0_m=1.0,
                        cov_margin_coef=0.0, mode_radius_m=1000.0)  # sigma 1 m, no far mass
        return Localizer(LocalizerConfig(**{**settings, **overrides}))

    probe = localizer()
    first = probe.localize(pano, Fix(float(lat), float(lon), 10.0, sigma_m=3.0), 10.0, encoding="rgb8", now_s=10.0)
    probe.close()
    east, north = first.easting_m, first.northing_m  # where this view lies whatever the fix (match_prior off)

    def run(offsets_m: list[float], stamps: list[float], **overrides) -> list:
        loc, out = localizer(**overrides), []
        for offset, t in zip(offsets_m, stamps):
            fix = Fix(*map(float, geo.utm_to_latlon(east + offset, north, tiles.zone)), t, sigma_m=1.0)
            out.append(loc.localize(pano, fix, t, encoding="rgb8", now_s=t))
        loc.close()
        return out

    refused = run([5.0, 5.0], [10.0, 10.5])
    assert [e.reason for e in refused] == [Reason.MAHALANOBIS] * 2
    assert all(9.0 < e.mahalanobis_d2 < 13.8 for e in refused)  # each under max_mahalanobis by itself
    assert "first fix" in refused[0].message and "> 4.1 (first_fix_mahalanobis_share 0.3" in refused[0].message

    started = run([0.0, 5.0, 5.0, 5.0], [10.0, 10.5, 11.0, 75.0])
    assert [e.reason for e in started] == [Reason.OK] * 3 + [Reason.MAHALANOBIS]
    assert started[0].mahalanobis_d2 < 0.5 and "first fix" in started[3].message
    assert [e.reason for e in run([1.5, 1.5], [10.0, 10.5])] == [Reason.OK] * 2
    for off in (dict(first_fix_mahalanobis_share=0.0), dict(max_mahalanobis=1000.0)):
        assert [e.reason for e in run([5.0, 5.0], [10.0, 10.5], **off)] == [Reason.OK] * 2, off


def _standing_still(bev_export, world: tuple, monkeypatch, plan: list[dict], stamps: list[float],
                    odometry: bool = True, moved_m: float = 0.0, reset_after: int | None = None, **overrides) -> tuple:
    """The bev localizer on world's (bev_world) view at stamps, each frame's pose match replaced by plan's fields (score over
    its scope's median 0.1, far_covariance_m2, mode_mass), with a fix (sigma 3 m) on the view's place; odometry
    aligned to the grid (odom x runs east) says the platform stands still, or moved moved_m east from 10 s to
    10.5 s. The gates are off but for what overrides sets. The localizer (closed; course_votes_s: the stamps
    whose published position voted on odometry's alignment) and its estimates."""
    import dataclasses

    from crossview_ros.estimate import Fix
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, _, lat, lon, pano = world
    settings = dict(tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime", engine_threads=1,
                    max_mahalanobis=1e6, scope_min_m=40.0, min_mode_mass=0.0, min_imagery_support=0.0,
                    min_imagery_score=0.0, imagery_window=1, min_prior_inside=0.0, odometry=odometry,
                    covariance_file="none", cov_sigma0_m=1.0, cov_margin_coef=0.0)
    loc = Localizer(LocalizerConfig(**{**settings, **overrides}))
    odometry_s = iter(8.0 + 0.1 * k for k in range(int(10 * (max(stamps) - 7.0))))  # 8 s to a second past the last

    def drive_until(stamp_s: float) -> None:  # odometry arrives as the platform moves, not all ahead of it
        for t in odometry_s:
            loc.add_odometry(t, moved_m * min(max((t - 10.0) / 0.5, 0.0), 1.0), 0.0, 0.0)
            if t > stamp_s + 0.5:
                return

    drive_until(stamps[0])
    for k in range(20 if odometry else 0):  # enough that the frames' own bearings cannot unalign it
        loc.odometry.vote_bearing(8.0 + 0.1 * k, 0.0)
    real = loc.matcher.refine_pose
    planned_fields = iter(plan)

    def planned(ground, candidates):
        fields = next(planned_fields)
        return dataclasses.replace(real(ground, candidates), scope_median_score=0.1,
                                   **{**fields, "score": fields["score"] + 0.1})

    monkeypatch.setattr(loc.matcher, "refine_pose", planned)
    loc.course_votes_s = []  # the stamps whose published position voted on odometry's alignment
    if odometry:
        vote_course = loc.odometry.vote_course

        def recorded(stamp_s: float, *args, source: str = "gnss", **kwargs) -> None:
            if source == "estimate":
                loc.course_votes_s.append(stamp_s)
            vote_course(stamp_s, *args, source=source, **kwargs)

        monkeypatch.setattr(loc.odometry, "vote_course", recorded)
    out = []
    for k, t in enumerate(stamps):
        drive_until(t)
        out.append(loc.localize(pano, Fix(float(lat), float(lon), t, sigma_m=3.0), t, encoding="rgb8", now_s=t))
        if k == reset_after:
            loc.reset()
    loc.close()
    return loc, out


def test_motion_gate_refuses_an_estimate_held_while_odometry_drives_on(bev_export, tmp_path, monkeypatch):
    """Odometry aligned to the grid (odom x runs east) says the platform drives east at 5 m/s from 8 s; the
    planned estimates (sigma 1 m, one mode) either follow it or stay where the first one was, as a
    look-alike holding the track would. Nothing is compared until a published estimate is motion_check_s
    (3 s) old; from 13 s each held estimate lies 15 m or more from where odometry carries the newest one
    published 3 to 6 s before (d^2 about 15^2 / 2.6): MOTION, the distance and the age in its message.
    At 19 s none published is 3 to 6 s old (the last, 12.5 s, is 6.5 s old): published again, and refused
    3 s later. Estimates that move with odometry all pass; so does the held one with motion_check_s 0 or
    without odometry."""
    import dataclasses

    from crossview_ros.estimate import Fix, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    _, tile_dir, _, lat, lon, pano = bev_world(bev_export, tmp_path)
    stamps = 10.0 + 0.5 * np.arange(27)  # 10 s to 23 s

    def run(follow: bool, odometry: bool = True, **overrides) -> list:
        loc = Localizer(LocalizerConfig(**{**dict(
            tile_set=str(tile_dir), model=str(bev_export), engine="onnxruntime", engine_threads=1,
            max_mahalanobis=1e6, scope_min_m=40.0, min_mode_mass=0.0, min_imagery_support=0.0,
            min_imagery_score=0.0, imagery_window=1, min_prior_inside=0.0, odometry=odometry,
            covariance_file="none", cov_sigma0_m=1.0, cov_margin_coef=0.0), **overrides}))
        for k in range(161):  # 8 s to 24 s
            loc.add_odometry(8.0 + 0.1 * k, 0.5 * k, 0.0, 0.0)
        for k in range(20 if odometry else 0):
            loc.odometry.vote_bearing(8.0 + 0.1 * k, 0.0)
        real, first = loc.matcher.refine_pose, []

        def planned(ground, candidates):
            pose = real(ground, candidates)
            first.append(first[0] if first else (pose.easting_m, pose.northing_m))
            east = first[0][0] + (5.0 * (0.5 * (len(first) - 1)) if follow else 0.0)
            return dataclasses.replace(pose, easting_m=east, northing_m=first[0][1], mode_mass=1.0,
                                       far_covariance_m2=None)

        monkeypatch.setattr(loc.matcher, "refine_pose", planned)
        out = []
        for t in stamps:
            out.append(loc.localize(pano, Fix(float(lat), float(lon), t, sigma_m=3.0), t, encoding="rgb8",
                                    now_s=t))
        loc.close()
        return out

    OK, M = Reason.OK, Reason.MOTION
    held = run(follow=False)
    assert [e.reason for e in held] == [OK] * 6 + [M] * 12 + [OK] * 6 + [M] * 3
    assert all(e.has_position for e in held)  # a refused frame keeps what it computed
    assert "15.0 m from where odometry carries the one published 3.0 s earlier" in held[6].message
    assert "max_motion_mahalanobis 5.99" in held[6].message
    followed = run(follow=True)
    assert [e.reason for e in followed] == [OK] * len(stamps)
    assert [e.reason for e in run(follow=False, motion_check_s=0.0)] == [OK] * len(stamps)
    assert [e.reason for e in run(follow=False, odometry=False)] == [OK] * len(stamps)
    # the motion gap: the held estimate is 5 m/s x the age of the oldest estimate published in the last 3 s
    # from where odometry carries it (none published then: none); the followed one is where odometry carries
    # every one
    published = [t for t, e in zip(stamps, held) if e.reason is OK]

    def held_gap(t: float) -> float | None:
        ages = [t - p for p in published if 0 < t - p <= 3.0]
        return 5.0 * max(ages) if ages else None

    assert held[0].motion_gap_m is None and followed[0].motion_gap_m is None
    want = [held_gap(t) for t in stamps]
    assert [e.motion_gap_m is None for e in held] == [w is None for w in want]
    assert [e.motion_gap_m for e in held if e.motion_gap_m is not None] == pytest.approx([w for w in want if w])
    assert max(w for w in want if w) == pytest.approx(15.0) and sum(w is None for w in want) >= 5
    # (where odometry can carry: the planned views' own bearings, voted into its alignment, leave it unsure at times)
    measured = [e.motion_gap_m for e in followed[1:] if e.motion_gap_m is not None]
    assert len(measured) >= 15 and measured == pytest.approx([0.0] * len(measured), abs=1e-6)
    # ... and with cov_motion_coef 1 each covariance is the one without plus the gap squared (none measured: the
    # uncalibrated typical gap, 0), and so is the protection level plus the gap
    widened = run(follow=False, cov_motion_coef=1.0)
    assert sum((e.motion_gap_m or 0.0) >= 5.0 for e in widened) >= 10
    for a, b in zip(widened, held):
        gap = a.motion_gap_m or 0.0
        assert np.asarray(a.covariance_enu_m2) == pytest.approx(np.asarray(b.covariance_enu_m2) + np.eye(2) * gap ** 2,
                                                               rel=1e-6)
        assert a.protection_level_m == pytest.approx(math.sqrt(1.0 + gap ** 2) * math.sqrt(-2.0 * math.log(0.01)) + gap)


VOUCH_STAMPS = [10.0, 12.0, 20.0, 65.0, 75.0]  # the last two 53 s and 63 s after the 12 s pass (imagery_track_s 60 s)
CARRIED_M2 = np.eye(2) * (1.0 + 0.05 ** 2)  # a 1 m anchor and odometry's floor variance, standing still


def test_odometry_vouches_for_a_view_below_the_imagery_floor_where_the_track_is(bev_export, tmp_path, monkeypatch):
    """The same view scores above the imagery floor (0.3, a window of one view) at 10 s and 12 s, then below
    it. Standing still, odometry carries the anchor onto each later estimate: the MISMATCH gate's refusal
    is overruled (imagery_vouched) up to imagery_track_s (60 s) after the anchor, which vouched frames do
    not renew (the 75 s frame is refused although the 65 s one was vouched). The anchor is the sharper of
    the carried one and a new unaided pass: the 12 s pass, planned 4 m wide (a far mode of 10 % of the
    posterior, 16 m^2), does not
    replace the 10 s one (1 m^2 plus odometry's floor, 0.05^2 m^2); planned the other way round, it does. A
    vouched estimate is published no sharper than the carried anchor, and does not vote on odometry's
    alignment (it was chosen for agreeing with it). Odometry that says the platform
    moved 3 m still vouches (within imagery_track_radius_m 5 m), not with a 2 m radius. Without odometry,
    with imagery_track_s 0, when odometry says the platform moved 20 m (the same view is then not where
    the track is), or after a reset, every refusal stands."""
    from crossview_ros.estimate import Reason
    from crossview_ros.localize_frames import Frame
    from crossview_ros.localize_summary import reasons_text, summarize

    scores = [0.5, 0.5, 0.2, 0.2, 0.2]
    wide = np.eye(2) * 16.0
    world = bev_world(bev_export, tmp_path)

    def run(fars: tuple = (None, wide, None, None, None), **kwargs) -> tuple:
        plan = [dict(score=score, far_covariance_m2=far, mode_mass=1.0 if far is None else 0.9)
                for score, far in zip(scores, fars)]
        return _standing_still(bev_export, world, monkeypatch, plan, VOUCH_STAMPS,
                               **{"min_imagery_score": 0.3, **kwargs})

    for wide_at in (1, 0):  # the 12 s pass wide (kept off the anchor), or the 10 s one (replaced)
        loc, out = run(fars=tuple(wide if k == wide_at else None for k in range(len(scores))))
        assert [e.reason for e in out] == [Reason.OK] * 4 + [Reason.MISMATCH]
        assert [e.imagery_vouched for e in out] == [False, False, True, True, False] and loc.imagery.vouched == 2
        assert not any(e.ambiguity_vouched for e in out) and loc.imagery.ambiguity_vouched == 0
        assert loc.course_votes_s == [10.0, 12.0]  # the vouched frames do not vote on odometry's alignment
        assert [e.imagery_score for e in out] == pytest.approx(scores)
        np.testing.assert_allclose(out[wide_at].covariance_enu_m2, np.eye(2) * 17.0, atol=1e-9)
        for vouched in out[2:4]:  # 1 m by itself, raised to the carried anchor's
            np.testing.assert_allclose(vouched.covariance_enu_m2, CARRIED_M2, atol=1e-9)
            # recomputed on it (the protection level less the motion gap it adds)
            assert (vouched.protection_level_m - (vouched.motion_gap_m or 0.0)
                    > out[1 - wide_at].protection_level_m - (out[1 - wide_at].motion_gap_m or 0.0))
    assert "below the imagery floor 0.300" in out[4].message and loc.odometry.alignment.offset() is not None
    frames = [Frame(Path("pano.png"), None)] * len(out)
    summary = summarize(out, frames, [None] * len(out), heading=False)
    assert summary["imagery_vouched"] == 2
    assert reasons_text(summary) == "MISMATCH 1, OK 4 (OK includes 2 whose MISMATCH odometry overruled)"
    loc, out = run(moved_m=3.0)  # the same view, 3 m from where odometry carries the anchor: within 5 m
    assert [e.imagery_vouched for e in out] == [False, False, True, True, False]
    refused = [Reason.OK, Reason.OK, Reason.MISMATCH, Reason.MISMATCH, Reason.MISMATCH]
    for kwargs in (dict(odometry=False), dict(imagery_track_s=0.0), dict(moved_m=20.0), dict(reset_after=1),
                   dict(moved_m=3.0, imagery_track_radius_m=2.0)):
        loc, out = run(**kwargs)
        assert ([e.reason for e in out], loc.imagery.vouched) == (refused, 0), kwargs


def test_a_vouched_estimate_is_published_with_the_tracks_covariance_where_it_is_the_sharper(bev_export, tmp_path,
                                                                                            monkeypatch):
    """The vouched frames (20 s and 65 s, below the imagery floor) planned with a far mode of 10 % of the
    posterior, 16 m^2 per axis: the imagery's covariance is 1 + 16 m^2 per axis. The track judges the
    estimate by the carried anchor (CARRIED_M2: the 12 s pass) and the estimate's offset from it squared
    (computed here from their latitudes and longitudes), whatever the imagery shows: standing still,
    about CARRIED_M2 itself, published instead; with odometry saying the platform moved 3 m east between
    10 s and 10.5 s, the grid filter lands the later estimates most of a metre from the anchor, and the
    track's covariance, half a metre^2 or more wider east, is still the sharper. A far mode of 0.25 m^2
    (1.25 m^2 per axis) is sharper than that, and is published. The protection level is the published
    covariance's, and each vouched estimate records the track's covariance and the imagery's; unaided ones
    record neither."""
    from crossview_ros import geo
    from crossview_ros.estimate import Reason

    world = bev_world(bev_export, tmp_path)

    def run(far_m2: float, moved_m: float) -> list:
        far = np.eye(2) * far_m2
        plan = [dict(score=s, far_covariance_m2=f, mode_mass=0.9 if f is not None else 1.0)
                for s, f in zip([0.5, 0.5, 0.2, 0.2, 0.2], (None, None, far, far, far))]
        loc, out = _standing_still(bev_export, world, monkeypatch, plan, VOUCH_STAMPS, moved_m=moved_m,
                                   min_imagery_score=0.3)
        assert [e.reason for e in out] == [Reason.OK] * 4 + [Reason.MISMATCH]
        assert [e.imagery_vouched for e in out] == [False, False, True, True, False]
        assert all(e.track_covariance_enu_m2 is None and e.imagery_covariance_enu_m2 is None for e in out[:2])
        for e in out[2:4]:  # the imagery's covariance recorded whichever is published (calibration keeps it)
            np.testing.assert_allclose(e.imagery_covariance_enu_m2, np.eye(2) * (1.0 + far_m2), atol=1e-9)
        return loc, out

    def by_track(e, anchor) -> np.ndarray:  # CARRIED_M2 + the offset from the anchor (it stands still since)
        offset = np.array(geo.offset_enu_m(anchor.lat_deg, anchor.lon_deg, e.lat_deg, e.lon_deg))
        return CARRIED_M2 + np.outer(offset, offset)

    for moved_m in (0.0, 3.0):
        loc, out = run(16.0, moved_m)
        for e in out[2:4]:  # the 12 s pass is the anchor (as sharp as the carried 10 s one, and newer)
            np.testing.assert_allclose(e.track_covariance_enu_m2, by_track(e, out[1]), atol=1e-3)
            np.testing.assert_allclose(e.covariance_enu_m2, e.track_covariance_enu_m2, atol=1e-12)
            assert e.protection_level_m == pytest.approx(loc.covariance.protection_level_m(e.covariance_enu_m2, 0.01))
    assert e.covariance_enu_m2[0, 0] > 1.5  # moved: the grid filter, carried 3 m, lands nearly a metre off
    loc, out = run(0.25, 3.0)
    for e in out[2:4]:
        np.testing.assert_allclose(e.covariance_enu_m2, np.eye(2) * 1.25, atol=1e-9)
        np.testing.assert_allclose(e.track_covariance_enu_m2, by_track(e, out[1]), atol=1e-3)
        assert e.protection_level_m == pytest.approx(loc.covariance.protection_level_m(np.eye(2) * 1.25, 0.01))


def test_odometry_vouches_for_the_mode_of_an_ambiguous_posterior_where_the_track_is(bev_export, tmp_path,
                                                                                     monkeypatch):
    """The same view, its posterior planned as one place at 10 s and 12 s (mode mass 1, and 0.9 with a far
    covariance of 16 m^2 per axis at 12 s: wider than the 10 s anchor, which it does not replace), then as
    two (mode mass 0.5 < min_mode_mass 0.8, the other place's mass a far covariance of 9 m^2 per axis).
    Standing still, odometry carries the anchor onto the mode: the AMBIGUOUS refusal is overruled
    (ambiguity_vouched) up to imagery_track_s after the anchor, never renewed by a vouched frame, which
    does not vote on odometry's alignment either. The track says which place: the vouched frame's
    covariance drops the other place's mass and is the mode's (1 m^2) raised to the carried anchor's,
    while a frame published unaided keeps its far mass (the 12 s one, 1 + 16 m^2). Without odometry,
    with imagery_track_s 0, or when odometry says the platform moved 20 m, every refusal stands."""
    from crossview_ros.estimate import Reason
    from crossview_ros.localize_frames import Frame
    from crossview_ros.localize_summary import reasons_text, summarize

    far = np.eye(2) * 9.0
    world = bev_world(bev_export, tmp_path)

    def run(**kwargs) -> tuple:
        plan = [dict(score=0.5, mode_mass=m, far_covariance_m2=f)
                for m, f in zip((1.0, 0.9, 0.5, 0.5, 0.5), (None, np.eye(2) * 16.0, far, far, far))]
        return _standing_still(bev_export, world, monkeypatch, plan, VOUCH_STAMPS,
                               **{"min_mode_mass": 0.8, **kwargs})

    loc, out = run()
    assert [e.reason for e in out] == [Reason.OK] * 4 + [Reason.AMBIGUOUS]
    assert [e.ambiguity_vouched for e in out] == [False, False, True, True, False]
    assert loc.imagery.ambiguity_vouched == 2 and loc.imagery.vouched == 0
    assert loc.course_votes_s == [10.0, 12.0]  # a frame the track vouched for is no evidence of its alignment
    assert "only 50 % of the posterior" in out[4].message
    np.testing.assert_allclose(out[1].covariance_enu_m2, np.eye(2) * 17.0, atol=1e-9)
    for vouched in out[2:4]:
        np.testing.assert_allclose(vouched.covariance_enu_m2, CARRIED_M2, atol=1e-9)
    frames = [Frame(Path("pano.png"), None)] * len(out)
    summary = summarize(out, frames, [None] * len(out), heading=False)
    assert summary["ambiguity_vouched"] == 2
    assert reasons_text(summary) == "AMBIGUOUS 1, OK 4 (OK includes 2 whose AMBIGUOUS odometry overruled)"
    refused = [Reason.OK, Reason.OK] + [Reason.AMBIGUOUS] * 3
    for kwargs in (dict(odometry=False), dict(imagery_track_s=0.0), dict(moved_m=20.0)):
        loc, out = run(**kwargs)
        assert ([e.reason for e in out], loc.imagery.ambiguity_vouched) == (refused, 0), kwargs


def test_a_view_of_this_place_stands_above_its_scope_level(bev_export):
    """scope_median_score, the level the imagery floor judges a view's score against: the median over the
    scope's positions lies below the best score, and a view cut from this scope stands far higher above
    it than a view cut from another place's features does."""
    from crossview_ros.engines import OnnxEngine
    from crossview_ros.matchers import bev_grid as bev_match

    engine = OnnxEngine(bev_export, threads=1)
    smap, ground = planted_scope(engine, 0, (6, 4))
    _, elsewhere = planted_scope(engine, 0, (6, 4), seed=5)
    own = bev_match.match_scope(engine, ground, smap, exclusion_m=5.0, top_k=3)
    other = bev_match.match_scope(engine, elsewhere, smap, exclusion_m=5.0, top_k=3)
    for m in (own, other):
        assert math.isfinite(m.scope_median_score) and m.scope_median_score < m.score
    assert own.score - own.scope_median_score > 1.5 * (other.score - other.scope_median_score)  # 0.89, 0.46
