"""Siamese models: registry, shapes and normalisation, weight sharing, aggregator maths, weights I/O."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from crossview_training import models as M  # noqa: E402

GROUND = (64, 128)
AERIAL = (64, 64)
# Independent expectations per backbone: channels of the last conv map and its stride
# (VGG16: conv5_3 at stride 16; the others: last stage at stride 32).
CHANNELS_STRIDE = {"mobilenetv3_large_100": (960, 32), "mobilenetv3_small_100": (576, 32), "vgg16": (512, 16), "resnet50": (2048, 32),
                   "convnext_tiny": (768, 32)}

torch.set_num_threads(1)


def tiny(name: str = "small", **overrides) -> M.CrossViewModel:
    return M.create_model(name, ground_size=GROUND, aerial_size=AERIAL, **overrides).eval()


@pytest.fixture(scope="module")
def small() -> M.CrossViewModel:
    torch.manual_seed(0)
    return tiny()


def inputs(b_ground: int = 2, b_aerial: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b_ground, 3, *GROUND, generator=gen), torch.randn(b_aerial, 3, *AERIAL, generator=gen)


@pytest.mark.parametrize("name", M.list_models("descriptor"))
def test_every_preset_gives_unit_descriptors_and_feature_maps(name):
    model = tiny(name)
    pano, sat = inputs()
    with torch.no_grad():
        g, a = model(pano, sat)
        off = model.offset(g[:2], a[:2])
        gf, af = model.ground_features(pano), model.aerial_features(sat)
    dim = M.MODELS[name]["dim"]
    assert g.shape == (2, dim) and a.shape == (3, dim) and off.shape == (2, 2)
    np.testing.assert_allclose(g.norm(dim=1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(a.norm(dim=1).numpy(), 1.0, atol=1e-5)
    channels, stride = CHANNELS_STRIDE[model.config.backbone]
    assert gf.shape == (2, channels, GROUND[0] // stride, GROUND[1] // stride)
    aerial_in = model.config.polar_size if model.config.polar_size != (0, 0) else AERIAL
    assert af.shape == (3, channels, aerial_in[0] // stride, aerial_in[1] // stride)
    assert tuple(gf.shape[1:]) == model.ground_feature_shape and model.feature_stride == stride
    assert all(torch.isfinite(t).all() for t in (g, a, off, gf, af))


def test_one_registry_for_every_family():
    assert M.list_models() == sorted(M.list_models("descriptor") + M.list_models("bev"))
    assert "bev_small" in M.list_models("bev") and "small" in M.list_models("descriptor")
    bev = M.create_model("bev_small", pano_size=(32, 64), tile_px=32, kernel_cells=4)
    assert type(bev).__name__ == "BevModel" and bev.name == "bev_small" and M.model_family("bev_small") == "bev"
    again = M.model_from_checkpoint({"model_name": bev.name, "model_config": bev.config.to_dict(),
                                     "state_dict": bev.state_dict()})
    assert M.model_hash(again) == M.model_hash(bev)
    with pytest.raises(ValueError, match="pretrained_path"):
        M.create_model("bev_small", pretrained_path="w.pth")
    with pytest.raises(ValueError, match="unknown BEV model config keys"):
        M.create_model("bev_small", dim=3)


def test_paper_descriptor_sizes():
    assert M.MODELS["vgg16_safa"]["dim"] == 8 * 512  # VIGOR: 8 SAFA blocks x 512 channels
    assert M.MODELS["vgg16_netvlad"]["netvlad_clusters"] == 64  # CVM-Net
    assert M.ModelConfig().netvlad_clusters == 64 and M.ModelConfig().safa_blocks == 8


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError) as err:
        M.create_model("resnet9000")
    for name in M.list_models():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="bogus_key"):
        M.create_model("small", bogus_key=1)
    with pytest.raises(ValueError, match="mobilenetv3"):
        M.ModelConfig(backbone="no_such_net")
    with pytest.raises(ValueError, match="gem_fc"):
        M.ModelConfig(aggregator="mean")


def test_config_round_trip_and_aliases():
    cfg = M.ModelConfig(backbone="mobilenetv3", aggregator="netvlad", dim=128, ground_size=[32, 64])
    assert cfg.backbone == "mobilenetv3_large_100" and cfg.ground_size == (32, 64)
    assert M.ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config key"):
        M.ModelConfig.from_dict({**cfg.to_dict(), "depth": 3})


def test_convolutions_are_not_shared_between_views(small):
    model = copy.deepcopy(small)
    ground_ids = {p.data_ptr() for p in model.ground_backbone.parameters()}
    assert not ground_ids & {p.data_ptr() for p in model.aerial_backbone.parameters()}
    pano, sat = inputs()
    with torch.no_grad():
        g0, a0 = model(pano, sat)
        model.ground_backbone.model.conv_stem.weight.add_(0.5)
        g1, a1 = model(pano, sat)
    assert torch.equal(a0, a1)
    assert (g0 - g1).abs().max() > 1e-3
    with torch.no_grad():
        model.aerial_backbone.model.blocks[0][0].conv_dw.weight.mul_(-1.0)
        g2, a2 = model(pano, sat)
    assert torch.equal(g1, g2)
    assert (a1 - a2).abs().max() > 1e-3


def test_gem_fc_head_is_shared(small):
    model = copy.deepcopy(small)
    assert not any(k.startswith(("ground_pool", "aerial_pool")) for k in model.state_dict())
    pano, sat = inputs()
    with torch.no_grad():
        g0, a0 = model(pano, sat)
        model.head.fc.weight.add_(0.1)
        g1, a1 = model(pano, sat)
    assert (g0 - g1).abs().max() > 1e-4 and (a0 - a1).abs().max() > 1e-4


@pytest.mark.parametrize("aggregator", ["netvlad", "safa"])
def test_netvlad_and_safa_are_per_view(aggregator):
    model = tiny("small", backbone="mobilenetv3_large_100", aggregator=aggregator, dim=64, netvlad_clusters=4, safa_blocks=2)
    pano, sat = inputs()
    first = next(model.aerial_pool.parameters())
    with torch.no_grad():
        g0, a0 = model(pano, sat)
        first.add_(torch.randn(first.shape, generator=torch.Generator().manual_seed(3)))
        g1, a1 = model(pano, sat)
    assert torch.equal(g0, g1) and (a0 - a1).abs().max() > 1e-5


def test_gem_pooling_value():
    gem = M.GeM(p=3.0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    assert gem(x).item() == pytest.approx(expected, rel=1e-6)


def test_netvlad_matches_equation_1():
    torch.manual_seed(0)
    layer = M.NetVLAD(channels=3, clusters=2)
    x = torch.randn(1, 3, 2, 1)
    got = layer(x).detach().numpy()[0]
    u = x[0].reshape(3, 2).T.numpy()  # (N=2 local features, C=3)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    w = layer.assign.weight.detach().numpy()[:, :, 0, 0]
    b = layer.assign.bias.detach().numpy()
    c = layer.centroids.detach().numpy()
    vlad = np.zeros((2, 3))
    for j in range(2):
        logits = w @ u[j] + b
        a = np.exp(logits) / np.exp(logits).sum()
        for k in range(2):
            vlad[k] += a[k] * (u[j] - c[k])
    vlad /= np.linalg.norm(vlad, axis=1, keepdims=True)  # intra-normalisation
    vlad = vlad.reshape(-1)
    np.testing.assert_allclose(got, vlad / np.linalg.norm(vlad), atol=1e-6)


def test_safa_matches_the_spatial_aware_blocks():
    torch.manual_seed(0)
    layer = M.SAFA(map_hw=(4, 4), blocks=2, pool=2)  # 4x4 max-pooled 2x2 -> 2x2, hidden 2
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape))
    x = torch.randn(1, 3, 4, 4)
    got = layer(x).detach().numpy()[0]
    xn = x[0].numpy()
    pooled = xn.reshape(3, 2, 2, 2, 2).max(axis=(2, 4))  # (C, 2, 2)
    local = pooled.reshape(3, 4)  # (C, hw)
    m = local.max(axis=0)  # max over channels
    out = []
    for k in range(2):
        w1, b1 = layer.weight1[k].detach().numpy(), layer.bias1[k, 0].detach().numpy()
        w2, b2 = layer.weight2[k].detach().numpy(), layer.bias2[k, 0].detach().numpy()
        weights = (m @ w1 + b1) @ w2 + b2  # (hw,)
        out.append(local @ weights)  # (C,)
    np.testing.assert_allclose(got, np.concatenate(out), rtol=1e-5, atol=1e-5)


def test_offset_head_reads_ground_then_aerial():
    head = M.OffsetHead(dim=2, hidden=3)
    with torch.no_grad():
        head.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, -1]]))
        head.fc1.bias.zero_()
        head.fc2.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 1]]))
        head.fc2.bias.copy_(torch.tensor([0.5, 0.0]))
    out = head(torch.tensor([[2.0, 7.0]]), torch.tensor([[3.0, -4.0]]))
    # fc1 -> relu([2, 3, 4]) = [2, 3, 4]; fc2 -> [2 + 0.5, 3 + 4]
    assert out.tolist() == [[2.5, 7.0]]


def test_random_init_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="crossview_training.models"):
        tiny()
    assert "randomly initialised" in caplog.text


def test_pretrained_weights_load_strictly(tmp_path):
    torch.manual_seed(5)
    imagenet = timm.create_model(M.MODELS["small"]["backbone"], pretrained=False)
    path = tmp_path / "mobilenetv3_imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = tiny(pretrained_path=path)
    for backbone in (model.ground_backbone, model.aerial_backbone):
        assert torch.equal(backbone.model.conv_stem.weight, imagenet.conv_stem.weight)
        assert torch.equal(backbone.model.blocks[-1][0].bn1.running_var, imagenet.blocks[-1][0].bn1.running_var)

    own = tmp_path / "backbone.pt"  # a backbone's own state_dict (keys under `model.`) loads too
    torch.save(model.ground_backbone.state_dict(), own)
    again = tiny(pretrained_path=own)
    assert torch.equal(again.aerial_backbone.model.conv_stem.weight, imagenet.conv_stem.weight)

    state = imagenet.state_dict()
    del state["blocks.1.0.conv_dw.weight"]
    state["blocks.9.extra.weight"] = torch.zeros(3)
    state["conv_stem.weight"] = torch.zeros(4, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(M.WeightsError) as err:
        tiny(pretrained_path=path)
    message = str(err.value)
    assert "blocks.1.0.conv_dw.weight" in message and "blocks.9.extra.weight" in message
    assert "conv_stem.weight" in message and "missing" in message and "unexpected" in message
    with pytest.raises(M.WeightsError, match="does not exist"):
        tiny(pretrained_path=tmp_path / "absent.pth")


def test_pretrained_weights_from_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    imagenet = timm.create_model(M.MODELS["small"]["backbone"], pretrained=False)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(imagenet.state_dict(), str(path))
    model = tiny(pretrained_path=path)
    assert torch.equal(model.ground_backbone.model.conv_stem.weight, imagenet.conv_stem.weight)


def test_model_hash_is_stable_and_sensitive(small):
    h = M.model_hash(small)
    assert h.startswith("sha256:") and len(h) == len("sha256:") + 64
    assert M.model_hash(small) == h
    twin = copy.deepcopy(small)
    assert M.model_hash(twin) == h
    rebuilt = tiny()
    rebuilt.load_state_dict(small.state_dict())
    assert M.model_hash(rebuilt) == h
    with torch.no_grad():
        twin.head.fc.bias[0] += 1e-6
    assert M.model_hash(twin) != h
    buffers = copy.deepcopy(small)
    buffers.aerial_backbone.model.bn1.running_mean[0] += 1.0  # buffers count too
    assert M.model_hash(buffers) != h


def test_checkpoint_round_trip(small, tmp_path):
    path = M.save_checkpoint(small, tmp_path / "run" / "last.pt", epoch=3, tile_size_m=72.96)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    loaded = M.load_checkpoint(path)
    assert not loaded.training and loaded.name == "small" and loaded.config == small.config
    assert M.model_hash(loaded) == M.model_hash(small)
    pano, sat = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(pano, sat)[0], small(pano, sat)[0])
    assert M.read_checkpoint(path)["epoch"] == 3


def test_bad_checkpoints_are_refused(small, tmp_path):
    state = small.state_dict()
    torch.save(state, tmp_path / "raw.pt")
    with pytest.raises(M.WeightsError, match="model_config"):
        M.load_checkpoint(tmp_path / "raw.pt")
    ckpt = {"model_name": "small", "model_config": small.config.to_dict(), "state_dict": dict(state)}
    del ckpt["state_dict"]["head.fc.weight"]
    ckpt["state_dict"]["head.extra"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(M.WeightsError) as err:
        M.load_checkpoint(tmp_path / "tampered.pt")
    assert "head.fc.weight" in str(err.value) and "head.extra" in str(err.value)
    with pytest.raises(M.WeightsError, match="does not exist"):
        M.load_checkpoint(tmp_path / "absent.pt")


def test_descriptor_is_independent_of_batch_composition(small):
    pano, sat = inputs(b_ground=3)
    with torch.no_grad():
        together = small.encode_ground(pano)
        alone = small.encode_ground(pano[1:2])
    np.testing.assert_allclose(together[1:2].numpy(), alone.numpy(), atol=1e-5)
    assert math.isclose(float(together[1] @ alone[0]), 1.0, abs_tol=1e-5)


@pytest.mark.parametrize("bearing_deg", [0.0, 90.0, 180.0, 270.0])
def test_polar_grid_puts_a_bearing_where_a_north_centred_panorama_has_it(bearing_deg):
    """A blob at a bearing from the tile centre lands in the panorama column of that bearing,
    far rows at the top (SAFA's polar transform, columns as in a VIGOR panorama)."""
    size, h, w = 64, 16, 64
    img = torch.zeros(1, 1, size, size)
    b = np.radians(bearing_deg)
    cx, cy = size / 2 + 24 * np.sin(b), size / 2 - 24 * np.cos(b)  # 24 px out, image y points south
    img[0, 0, int(cy) - 3:int(cy) + 3, int(cx) - 3:int(cx) + 3] = 1.0
    polar = torch.nn.functional.grid_sample(img, M.polar_grid((h, w)), align_corners=False)[0, 0]
    col = int(polar.sum(0).argmax())
    expected = ((bearing_deg + 180.0) % 360.0) / 360.0 * w
    assert min(abs(col + 0.5 - expected), w - abs(col + 0.5 - expected)) <= 2.0
    row = int(polar.sum(1).argmax())
    assert row == pytest.approx((1 - 24 / 32) * h, abs=1.5)  # radius 24 of 32 -> a quarter down
