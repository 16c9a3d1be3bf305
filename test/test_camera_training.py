"""Field-of-view sampling in bev training (crossview_training.bev.fov): the masks are the runtime's own
geometry, a cut view is black where its rig sees nothing and its cells carry the runtime's weights,
and a step trains on them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossview_ros.camera import CameraRig  # noqa: E402
from crossview_ros.matchers.bev_view import cell_visibility  # noqa: E402
from crossview_training import bev as B  # noqa: E402
from crossview_training.bev import fov  # noqa: E402

from test_bev import vigor_root  # noqa: E402,F401  (module fixture)

CFG = dict(pano_size=(32, 64), tile_px=32, tile_size_m=40.0, kernel_cells=4, channels=8, feature_dim=4)


def test_mask_bank_is_the_runtime_visibility_of_random_rigs():
    cfg = B.BevConfig(**CFG)
    bank = fov.mask_bank(cfg, 12, seed=3)
    rng = np.random.default_rng([3, 0xF0F])
    shares = []
    for i in range(12):
        vis = CameraRig(fov.random_rig(rng), fov.MASK_PANO_HW, cfg.camera_height_m).visibility
        want = cell_visibility(vis, res_m=cfg.res_m, cells=cfg.kernel_cells, stride=B.STRIDE,
                               height_m=cfg.camera_height_m)
        np.testing.assert_array_equal(bank.cells[i], want)
        # the pixel mask pooled per cell is the cell weight
        pooled = bank.pixels[i].reshape(4, B.STRIDE, 4, B.STRIDE).mean(axis=(1, 3))
        np.testing.assert_allclose(pooled, want, atol=1e-6)
        shares.append(want.mean())
    assert min(shares) < 0.6 and max(shares) > 0.05  # partial views, not all empty or whole


def test_cut_views_are_black_outside_their_rig_and_train(vigor_root):  # noqa: F811
    from crossview_training.datasets import cached_images, load_vigor_split

    cfg = B.BevConfig(**CFG)
    split = load_vigor_split(vigor_root, "same_train")
    panos, sats = cached_images(split, cfg.pano_size, (cfg.tile_px, cfg.tile_px), progress=False)
    pano_en, sat_en = split.metric_positions()
    mosaics = B.build_mosaics(split, np.asarray(sats), sat_en, cfg)
    bank = B.view_bank(cfg, panos)
    masks = fov.mask_bank(cfg, 16, seed=1)
    kwargs = dict(batch_size=5, region_px=96, rotation_deg=180.0, photometric=0.3, mirror=0.5)
    whole = B.sample_batch(np.random.default_rng(2), bank, pano_en, split.pano_city, np.arange(len(split)), mosaics,
                           cfg, **kwargs)
    assert torch.equal(whole.cells, torch.ones_like(whole.cells))
    cut = B.sample_batch(np.random.default_rng(2), bank, pano_en, split.pano_city, np.arange(len(split)), mosaics,
                         cfg, **kwargs, fov=(masks, 1.0))
    assert torch.equal(cut.target, whole.target)  # the same batch, only cut
    black = (0.0 - cfg.mean[0]) / cfg.std[0]
    for q in range(len(cut.target)):
        hits = [i for i in range(16) if torch.equal(cut.cells[q, 0], torch.from_numpy(masks.cells[i]))]
        assert hits, "each cut view carries a bank rig's cell weights"
        pixel = torch.from_numpy(masks.pixels[hits[0]]).bool()
        assert torch.all(cut.views[q][:, ~pixel] == black)
    model = B.BevModel(cfg)
    loss, _ = B.batch_loss(model, cut)
    loss.backward()
    assert torch.isfinite(loss) and model.ground_cnn[0].weight.grad.abs().sum() > 0


def test_fov_sampling_is_refused_for_descriptor_models():
    from crossview_training.train_config import TrainConfig

    with pytest.raises(ValueError, match="fov_sampling"):
        TrainConfig(model="small", fov_sampling=0.5)
