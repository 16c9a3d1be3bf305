"""Synthetic city and its orthophoto: determinism, geo-reference, content, shadows, epochs."""

from __future__ import annotations

import math

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from crossview_ros import geo  # noqa: E402
from crossview_ros.sim import city as city_mod  # noqa: E402
from crossview_ros.sim.city import CityConfig, generate_city  # noqa: E402
from crossview_ros.sim.ortho import render_orthophoto, sun_shadow, write_orthophoto  # noqa: E402
from crossview_ros.sim.scene import Buildings, Material, Scene, Sun  # noqa: E402

SMALL = dict(size_m=260.0, gsd_m=0.25)


@pytest.fixture(scope="module")
def city():
    return generate_city(CityConfig(seed=5, tower_share=1.0, **SMALL))


@pytest.fixture(scope="module")
def scene(city):
    return city.scene(0)


def _flat_scene(n: int = 240, gsd: float = 0.5, ground_rgb=(80, 80, 80)) -> Scene:
    """A bare road-covered square in zone 33N with its NW corner at (500000, 5000000)."""
    zone = geo.UTMZone(33, False)
    albedo = np.empty((n, n, 3), np.uint8)
    albedo[:] = ground_rgb
    return Scene(
        zone=zone, origin_e_m=500000.0, origin_n_m=5000000.0, gsd_m=gsd,
        height_m=np.zeros((n, n), np.float32), material=np.full((n, n), int(Material.ROAD), np.uint8),
        albedo=albedo, building_id=np.full((n, n), -1, np.int32),
        buildings=Buildings(np.zeros(0, np.float32), np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.uint8),
                            np.zeros(0, np.float32), np.zeros(0, np.float32)),
    )


def _add_box(scene: Scene, e0: float, e1: float, n0: float, n1: float, height: float, rgb) -> None:
    """Put a flat-roofed building over UTM box [e0, e1] x [n0, n1] (cell centres inside)."""
    g = scene.gsd_m
    cols = (np.arange(scene.shape[1]) + 0.5) * g + scene.origin_e_m
    rows = scene.origin_n_m - (np.arange(scene.shape[0]) + 0.5) * g
    m = ((cols >= e0) & (cols <= e1))[None, :] & ((rows >= n0) & (rows <= n1))[:, None]
    scene.height_m[m] = height
    scene.material[m] = Material.BUILDING
    scene.albedo[m] = rgb
    scene.building_id[m] = len(scene.buildings)
    b = scene.buildings
    scene.buildings = Buildings(np.append(b.height_m, np.float32(height)), np.vstack([b.facade_rgb, [rgb]]),
                                np.vstack([b.window_rgb, [[50, 50, 50]]]), np.append(b.floor_height_m, 3.0),
                                np.append(b.window_spacing_m, 3.0))


# --------------------------------------------------------------------------- config


def test_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="unknown CityConfig keys.*'sead'"):
        CityConfig.from_dict({"sead": 3})
    cfg = CityConfig.from_dict({"seed": 3, "size_m": 300.0})
    assert cfg.seed == 3 and cfg.size_m == 300.0
    assert CityConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad", [{"gsd_m": 0.0}, {"park_share": 1.5}, {"seed": -1}, {"size_m": 1.0},
                                 {"avenue_spacing_min_m": 300.0, "avenue_spacing_max_m": 200.0}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        CityConfig(**bad)


def test_config_refuses_datum_outside_utm():
    with pytest.raises(geo.GeoError):
        CityConfig(datum_lat_deg=86.0, datum_lon_deg=0.0)


# --------------------------------------------------------------------------- frame and determinism


def test_frame_is_gsd_aligned_and_centred_on_datum(city):
    cfg = city.config
    e, n, zone = geo.latlon_to_utm(cfg.datum_lat_deg, cfg.datum_lon_deg)
    assert city.zone == zone == geo.UTMZone(18, False)
    assert city.centre_e_m == pytest.approx(e) and city.centre_n_m == pytest.approx(n)
    for v in (city.origin_e_m, city.origin_n_m):
        assert abs(v / cfg.gsd_m - round(v / cfg.gsd_m)) < 1e-6
    assert city.size_px == round(cfg.size_m / cfg.gsd_m)
    half = city.size_px * cfg.gsd_m / 2
    assert abs(city.origin_e_m + half - e) <= cfg.gsd_m and abs(city.origin_n_m - half - n) <= cfg.gsd_m
    info = city.city_json()
    assert info["utm_zone"] == "18N" and info["epsg"] == 32618 and info["seed"] == 5
    assert info["datum"] == {"lat_deg": cfg.datum_lat_deg, "lon_deg": cfg.datum_lon_deg}


def test_same_seed_gives_identical_arrays(scene):
    again = generate_city(CityConfig(seed=5, tower_share=1.0, **SMALL))
    other = again.scene(0)
    for name in ("height_m", "material", "albedo", "building_id"):
        assert np.array_equal(getattr(scene, name), getattr(other, name)), name
    assert np.array_equal(scene.buildings.facade_rgb, other.buildings.facade_rgb)
    np.testing.assert_array_equal(again.streets.nodes_en, generate_city(again.config).streets.nodes_en)


def test_different_seeds_give_different_cities(scene, city):
    other_city = generate_city(CityConfig(seed=6, tower_share=1.0, **SMALL))
    other = other_city.scene(0)
    assert (scene.material == other.material).mean() < 0.7
    assert not np.allclose(scene.height_m, other.height_m)
    assert city.streets.nodes_en.shape != other_city.streets.nodes_en.shape or not np.allclose(
        city.streets.nodes_en, other_city.streets.nodes_en)


def test_scene_invariants(scene):
    mat, bid, h = scene.material, scene.building_id, scene.height_m
    assert mat.max() < len(Material)
    building = mat == Material.BUILDING
    assert np.array_equal(building, bid >= 0)  # trees and cars never sit on a roof
    assert (h[building] > 1.0).all()
    ground = np.isin(mat, [Material.ROAD, Material.MARKING, Material.SIDEWALK, Material.GRASS,
                           Material.PLAZA, Material.WATER])
    assert (h[ground] == 0).all()
    assert (h[mat == Material.CAR] > 0.5).all() and (h[mat == Material.CAR] < 2.6).all()
    assert (h[mat == Material.TREE] > 1.5).all()
    assert bid.max() < len(scene.buildings)
    assert not any(a.flags.writeable for a in (scene.height_m, scene.material, scene.albedo, scene.building_id))
    for m in (Material.ROAD, Material.MARKING, Material.SIDEWALK, Material.BUILDING, Material.TREE, Material.CAR):
        assert (mat == m).any(), m.name


def test_street_graph_is_connected_inside_and_on_roads(city, scene):
    g = city.streets
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    k = len(g.nodes_en)
    assert k > 10 and g.edges.min() >= 0 and g.edges.max() < k
    adj = coo_matrix((np.ones(len(g.edges)), (g.edges[:, 0], g.edges[:, 1])), shape=(k, k))
    assert connected_components(adj, directed=False)[0] == 1
    size = city.size_px * city.gsd_m
    e, n = g.nodes_en[:, 0] - city.origin_e_m, city.origin_n_m - g.nodes_en[:, 1]
    assert (e >= -1e-6).all() and (e <= size + 1e-6).all() and (n >= -1e-6).all() and (n <= size + 1e-6).all()
    assert (g.width_m > 5).all() and (g.sidewalk_m >= 2).all() and (g.lanes >= 1).all()
    inside = scene.contains(g.nodes_en[:, 0], g.nodes_en[:, 1])
    r, c = scene.cell_of(g.nodes_en[inside, 0], g.nodes_en[inside, 1])
    on_road = np.isin(scene.material[r, c], [Material.ROAD, Material.MARKING, Material.CAR, Material.TREE])
    assert on_road.mean() > 0.97


# --------------------------------------------------------------------------- epochs


def test_later_epoch_changes_only_cars_and_trees(city, scene):
    later = city.scene(1)
    assert later.epoch == 1 and later.extra["capture_date"] != scene.extra["capture_date"]
    assert np.array_equal(later.building_id, scene.building_id)
    assert later.buildings is scene.buildings
    movable = np.isin(scene.material, [Material.TREE, Material.CAR]) | np.isin(later.material, [Material.TREE, Material.CAR])
    assert np.array_equal(scene.material[~movable], later.material[~movable])
    assert np.array_equal(scene.height_m[~movable], later.height_m[~movable])
    assert np.array_equal(scene.albedo[~movable], later.albedo[~movable])
    cars0, cars1 = scene.material == Material.CAR, later.material == Material.CAR
    assert (cars0 & ~cars1).sum() > 500 and (cars1 & ~cars0).sum() > 500  # cars left and arrived
    trees0, trees1 = scene.material == Material.TREE, later.material == Material.TREE
    assert (trees0 != trees1).sum() > 500
    assert city.scene(1) is later  # cached
    assert np.array_equal(generate_city(city.config).scene(1).material, later.material)


# --------------------------------------------------------------------------- canyon depth


def test_canyon_depth_is_zero_in_the_park_and_deep_between_towers(city, scene):
    park = city.landmarks["park_centre_en"]
    assert scene.material[scene.cell_of(park[0], park[1])] in (Material.GRASS, Material.TREE, Material.SIDEWALK)
    assert city.canyon_depth(park[0], park[1]) == 0.0
    nodes = city.streets.nodes_en
    depth = city.canyon_depth(nodes[:, 0], nodes[:, 1])
    assert depth.shape == (len(nodes),) and (depth >= 0).all()
    best = int(np.argmax(depth))
    assert depth[best] > 1.0
    # Independent check at the deepest node: the tallest roof within 30 m is > its distance
    # to the nearest roof times two (a canyon at least as deep as it is wide).
    r, c = scene.cell_of(nodes[best, 0], nodes[best, 1])
    k = int(30 / scene.gsd_m)
    win = scene.height_m[max(0, r - k):r + k, max(0, c - k):c + k] * (scene.building_id[max(0, r - k):r + k, max(0, c - k):c + k] >= 0)
    assert win.max() > 20.0


def test_canyon_field_matches_height_over_width():
    n, gsd = 800, 0.25  # 200 m: two rows of 40 m buildings along a 20 m street at the centre
    h = np.zeros((n, n), np.float32)
    bid = np.full((n, n), -1, np.int32)
    street_lo, street_hi = int(90 / gsd), int(110 / gsd)
    for sl in (np.s_[int(40 / gsd):int(160 / gsd), int(60 / gsd):street_lo],
               np.s_[int(40 / gsd):int(160 / gsd), street_hi:int(140 / gsd)]):
        h[sl] = 40.0
        bid[sl] = 0
    field = city_mod._canyon_field(h, bid, gsd)
    cell = 200.0 / field.shape[0]
    centre = field[int(100 / cell), int(100 / cell)]
    assert centre == pytest.approx(40.0 / 20.0, rel=0.25)
    assert field[int(10 / cell), int(10 / cell)] == 0.0  # far from any building


def test_canyon_depth_takes_arrays(city):
    e = np.full((3, 4), city.centre_e_m)
    n = np.full((3, 4), city.centre_n_m)
    assert city.canyon_depth(e, n).shape == (3, 4)


# --------------------------------------------------------------------------- orthophoto


def test_material_at_known_utm_coordinate_shows_in_geotiff(tmp_path):
    scene = _flat_scene()
    roof = (200, 60, 50)
    _add_box(scene, 500040.0, 500050.0, 4999940.0, 4999950.0, 30.0, roof)
    image = render_orthophoto(scene, Sun(135.0, 50.0), blur_sigma_px=0.0)
    path = write_orthophoto(tmp_path / "ortho.tif", image, scene, compress="deflate")
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32633
        assert tuple(ds.transform)[:6] == (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)
        band = ds.read()
        row, col = ds.index(500045.0, 4999945.0)  # roof centre
        assert tuple(band[:, row, col]) == roof  # a flat sunlit roof shows its colour exactly
        row, col = ds.index(500100.0, 4999900.0)  # open road, far from the building
        assert tuple(band[:, row, col]) == (80, 80, 80)
        row, col = ds.index(500030.0, 4999960.0)  # 10 m north-west of the roof: in its shadow
        assert band[:, row, col].max() < 0.55 * 80


def test_generated_city_orthophoto_georeference_and_content(tmp_path, city, scene):
    image = render_orthophoto(scene, Sun(135.0, 50.0))
    assert image.shape == scene.shape + (3,) and image.dtype == np.uint8
    path = write_orthophoto(tmp_path / "city.tif", image, scene)  # default: JPEG-in-TIFF
    assert not list(tmp_path.glob(".*tmp"))
    shadow = sun_shadow(scene.height_m, scene.gsd_m, Sun(135.0, 50.0))
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == city.zone.epsg
        assert ds.transform.a == city.gsd_m and ds.transform.e == -city.gsd_m
        assert ds.transform.c == city.origin_e_m and ds.transform.f == city.origin_n_m
        assert ds.block_shapes == [(256, 256)] * 3 and ds.compression.name.upper() == "JPEG"
        assert ds.tags()["CAPTURE_DATE"] == scene.extra["capture_date"]
        rng = np.random.default_rng(0)
        for material, check in ((Material.ROAD, "grey"), (Material.BUILDING, "roof")):
            # Sunlit cells whose 7x7 neighbourhood is the same material and flat.
            rows, cols = np.nonzero(scene.material == material)
            pick = rng.choice(len(rows), size=min(4000, len(rows)), replace=False)
            found = 0
            for r, c in zip(rows[pick], cols[pick]):
                if not (3 <= r < scene.shape[0] - 3 and 3 <= c < scene.shape[1] - 3):
                    continue
                nb = np.s_[r - 3:r + 4, c - 3:c + 4]
                if (scene.material[nb] != material).any() or np.ptp(scene.height_m[nb]) > 0 or shadow[nb].max() > 0:
                    continue
                e = city.origin_e_m + (c + 0.5) * city.gsd_m  # the cell centre, computed independently
                n = city.origin_n_m - (r + 0.5) * city.gsd_m
                rr, cc = ds.index(e, n)
                assert (rr, cc) == (r, c)
                px = ds.read(window=((rr, rr + 1), (cc, cc + 1)))[:, 0, 0].astype(float)
                albedo = scene.albedo[nb].reshape(-1, 3).mean(axis=0)
                if check == "grey":
                    assert np.ptp(px) < 20 and 30 < px.mean() < 130, px
                else:
                    assert np.abs(px - albedo).max() < 0.25 * albedo.max() + 10, (px, albedo)
                found += 1
                if found == 5:
                    break
            assert found == 5, material


def test_shadow_falls_away_from_the_sun():
    for azimuth, elevation in ((135.0, 45.0), (250.0, 30.0), (20.0, 60.0)):
        scene = _flat_scene(n=400, gsd=0.5)
        _add_box(scene, 500095.0, 500105.0, 4999895.0, 4999905.0, 30.0, (150, 150, 150))
        shadow = sun_shadow(scene.height_m, scene.gsd_m, Sun(azimuth, elevation))
        image = render_orthophoto(scene, Sun(azimuth, elevation), blur_sigma_px=0.0)
        length = 30.0 / math.tan(math.radians(elevation))
        away = np.array([-math.sin(math.radians(azimuth)), -math.cos(math.radians(azimuth))])  # E, N
        centre = np.array([500100.0, 4999900.0])
        edge = 5.0 / max(abs(away[0]), abs(away[1]))  # centre to the box edge along `away`

        def cell(p, scene=scene):
            r, c = scene.cell_of(p[0], p[1])
            return int(r), int(c)
        beyond, before = cell(centre + away * (edge + 4.0)), cell(centre - away * (edge + 4.0))
        assert shadow[beyond] == 1.0 and shadow[before] == 0.0
        assert image[beyond].mean() < 0.6 * image[before].mean()
        assert shadow[cell(centre + away * (edge + 0.8 * length))] > 0.9
        assert shadow[cell(centre + away * (edge + length + 3.0))] < 0.1


def test_write_orthophoto_refuses_wrong_shape(tmp_path):
    scene = _flat_scene(n=64)
    with pytest.raises(ValueError, match="scene is"):
        write_orthophoto(tmp_path / "x.tif", np.zeros((10, 10, 3), np.uint8), scene)
    assert not any(tmp_path.iterdir())


def test_southern_hemisphere_city(tmp_path):
    sydney = generate_city(CityConfig(datum_lat_deg=-33.8688, datum_lon_deg=151.2093, size_m=150.0, gsd_m=0.5, seed=1))
    assert sydney.zone == geo.UTMZone(56, True) and str(sydney.zone) == "56S"
    e, n, _ = geo.latlon_to_utm(-33.8688, 151.2093)
    assert sydney.centre_e_m == pytest.approx(e)
    assert 6.2e6 < n < 6.3e6 and sydney.centre_n_m == pytest.approx(n)
    lat, lon = geo.utm_to_latlon(sydney.origin_e_m + 75.0, sydney.origin_n_m - 75.0, sydney.zone)
    assert geo.distance_m(lat, lon, -33.8688, 151.2093) < 1.0
    scene = sydney.scene(0)
    path = write_orthophoto(tmp_path / "sydney.tif", render_orthophoto(scene, Sun(0.0, 40.0)), scene)
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32756
        assert (ds.transform.c, ds.transform.f) == (sydney.origin_e_m, sydney.origin_n_m)


def test_tiles_cut_from_the_orthophoto_show_the_same_content(tmp_path, city, scene):
    tiles = pytest.importorskip("crossview_ros.tiles")
    import cv2

    image = render_orthophoto(scene, Sun(135.0, 50.0))
    path = write_orthophoto(tmp_path / "city.tif", image, scene, compress="deflate")
    out = tiles.build_tile_set([path], tmp_path / "tiles", tiles.TilingConfig(tile_size_m=72.96, tile_px=256),
                               progress=False)
    ts = tiles.TileSet.open(out)
    assert len(ts) > 4 and ts.zone == city.zone
    for tid in (0, len(ts) - 1):
        tile = ts.image(tid)
        half = ts.tile_size_m / 2
        c0 = int(round((ts.easting_m[tid] - half - city.origin_e_m) / city.gsd_m))
        r0 = int(round((city.origin_n_m - ts.northing_m[tid] - half) / city.gsd_m))
        k = int(round(ts.tile_size_m / city.gsd_m))
        ref = cv2.resize(image[r0:r0 + k, c0:c0 + k], (32, 32), interpolation=cv2.INTER_AREA).astype(float)
        got = cv2.resize(tile, (32, 32), interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(ref - got).mean() < 6.0


def test_orthophoto_with_an_appearance_is_reproducible(scene):
    appearance = pytest.importorskip("crossview_ros.sim.appearance")
    look = appearance.sample_appearance(np.random.default_rng(3), "aerial")
    plain = render_orthophoto(scene, Sun(135.0, 50.0))
    a = render_orthophoto(scene, Sun(135.0, 50.0), look, np.random.default_rng(7))
    b = render_orthophoto(scene, Sun(135.0, 50.0), look, np.random.default_rng(7))
    assert a.shape == plain.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - plain).mean() > 1.0
