"""The descriptor family: Siamese cross-view encoders, panorama and aerial tile to one L2-normalised space.

Layout of every model (papers in ../shared/papers/):

- Two timm backbones of the same architecture, one per view, never sharing weights
  (CVM-Net section 3.2: separate FCNs Theta_s^L, Theta_g^L; Revisiting section 3.1: "the
  convolutional layers ... are trained without sharing weights").
- A per-view aggregation step where the papers keep one per view, then a head shared by both
  views where the papers share one:

  ========  ==========================================  ========================================
  gem_fc    per view: nothing                           shared: GeM pooling + FC (Revisiting 3.1:
                                                        "fully connected layers of the two streams
                                                        share weights"; GeM replaces their global
                                                        average pooling)
  netvlad   per view: NetVLAD, 64 clusters (CVM-Net-I,  shared: FC K*C -> dim (the "dimension
            section 3.3, eq. 1; CVM-Net-I beats the     reduction" FC; VIGOR's CVM-Net code
            shared CVM-Net-II in Table 2)               reuses one FC for both views)
  safa      per view: SAFA spatial-aware blocks (VIGOR  shared: FC K*C -> dim only when dim !=
            4.1; VIGOR's code keeps `spatial_grd` and   K*C; the VIGOR preset (dim 4096 = 8 x 512)
            `spatial_sat` apart, and they cannot be     has none, as in the paper
            shared: the FC acts on the flattened map,
            whose size differs between the views)
  ========  ==========================================  ========================================

- L2 normalisation of the descriptor (CVM-Net section 5.2, Revisiting 3.1, VIGOR 4.2).
- An offset head, the MLP of VIGOR section 4.3: two FC layers (hidden 512 as in VIGOR's code)
  on the concatenated (ground, aerial) descriptors, regressing (dE, dN) / L of the camera
  relative to the tile centre. It reads the L2-normalised descriptors (VIGOR's code feeds the
  pre-normalisation ones) because those are all the runtime keeps per tile.

Inputs are RGB float images scaled to 0..1 and normalised with the config's mean/std (done by
the data pipeline and by the runtime, recorded in the export metadata).

Forward passes are traceable (no data-dependent Python control flow; the batch axis stays
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossview_ros.config import check_known_keys

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AGGREGATORS = ("gem_fc", "netvlad", "safa")

# Short names accepted for ModelConfig.backbone; any other timm model name works as well.
BACKBONE_ALIASES = {
    "vgg16": "vgg16",
    "resnet50": "resnet50",
    "convnext_tiny": "convnext_tiny",
    "mobilenetv3": "mobilenetv3_large_100",
    "efficientnet_b0": "efficientnet_b0",
}

# SAFA aggregates a stride-32 map (VIGOR's code: VGG16 conv5_3, stride 16, then a 2x2 max-pool).
_SAFA_STRIDE = 32
@dataclass
class ModelConfig:
    """Architecture of a CrossViewModel; stored in checkpoints and in the export metadata."""

    backbone: str = "mobilenetv3_large_100"  # timm name or an alias of BACKBONE_ALIASES (resolved on creation)
    aggregator: str = "gem_fc"  # gem_fc | netvlad | safa (module docstring: what each shares)
    dim: int = 512  # descriptor size; safa with dim == safa_blocks * channels adds no FC (VIGOR)
    ground_size: tuple[int, int] = (320, 640)  # (H, W) of the panorama input (VIGOR section 5: 640 x 320)
    aerial_size: tuple[int, int] = (320, 320)  # (H, W) of the tile input (VIGOR section 5: 320 x 320)
    netvlad_clusters: int = 64  # K of NetVLAD (CVM-Net section 5.2)
    safa_blocks: int = 8  # spatial-aware blocks (VIGOR section 5, following SAFA)
    offset_hidden: int = 512  # hidden width of the offset MLP (VIGOR code: fc_delta_1)
    polar_size: tuple[int, int] = (0, 0)  # (H, W) polar resampling of the tile about its centre before the aerial backbone (SAFA); (0, 0) = off
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB mean subtracted from 0..1 input (travels with the weights)
    std: tuple[float, float, float] = IMAGENET_STD  # RGB std dividing the 0..1 input

    def __post_init__(self) -> None:
        self.backbone = resolve_backbone(self.backbone)
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {', '.join(AGGREGATORS)}, got {self.aggregator!r}")
        self.polar_size = tuple(int(v) for v in self.polar_size)
        if len(self.polar_size) != 2 or (self.polar_size != (0, 0) and min(self.polar_size) < 16):
            raise ValueError(f"polar_size must be (0, 0) (off) or (H, W) with both sides >= 16 px, got {self.polar_size!r}")
        for name in ("ground_size", "aerial_size"):
            size = tuple(int(v) for v in getattr(self, name))
            if len(size) != 2 or min(size) < 16:
                raise ValueError(f"{name} must be (H, W) with both sides >= 16 px, got {getattr(self, name)!r}")
            setattr(self, name, size)
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} must hold 3 values (R, G, B), got {getattr(self, name)!r}")
            setattr(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        for name in ("dim", "netvlad_clusters", "safa_blocks", "offset_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a plain dict (YAML/JSON/checkpoint); unknown keys raise, naming the valid ones."""
        check_known_keys(cls, data, what="model config")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); from_dict(to_dict()) gives an equal config."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def resolve_backbone(name: str) -> str:
    """Alias or timm name -> timm name; unknown names raise with the aliases listed."""
    timm_name = BACKBONE_ALIASES.get(name, name)
    if not timm.is_model(timm_name):
        raise ValueError(
            f"unknown backbone {name!r}: not a timm model; aliases: {', '.join(sorted(BACKBONE_ALIASES))} "
            "(or any name from timm.list_models())"
        )
    return timm_name


def _feature_index(timm_name: str) -> int:
    """Which timm feature level is 'the last conv map': timm's VGG ends on pool5, we want conv5_3."""
    return -2 if timm_name.startswith("vgg") else -1


def create_backbone(timm_name: str) -> nn.Module:
    """timm feature extractor returning [last conv map (B, C, h, w)], randomly initialised.

    timm's "getter" wrapper keeps the classification model's parameter names (under `model.`)
    and prunes what follows the chosen level, so ImageNet checkpoints map onto it by name.
    """
    return timm.create_model(
        timm_name, pretrained=False, features_only=True, feature_cls="getter",
        out_indices=(_feature_index(timm_name),),
    )


def _output_shape(module: nn.Module, size: tuple[int, int]) -> tuple[int, int, int]:
    """(C, h, w) of the backbone output for a (1, 3, *size) input, computed on the meta device."""
    tensors = {k: torch.empty_like(v, device="meta") for k, v in module.named_parameters()}
    tensors.update({k: torch.empty_like(v, device="meta") for k, v in module.named_buffers()})
    was_training = module.training
    module.eval()  # batch-norm in training mode refuses a 1 x 1 map of a single image
    try:
        with torch.no_grad():
            out = torch.func.functional_call(module, tensors, (torch.empty(1, 3, *size, device="meta"),))
    finally:
        module.train(was_training)
    return tuple(int(v) for v in out[0].shape[1:])  # type: ignore[return-value]


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): (mean x^p)^(1/p), p learnt, 3 at start."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, h, w) -> (B, C)."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class GeMFC(nn.Module):
    """GeM pooling then a linear layer: the shared global head (Revisiting section 3.1)."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.pool = GeM()
        self.fc = nn.Linear(channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, h, w) -> (B, dim), not normalised."""
        return self.fc(self.pool(x))


class NetVLAD(nn.Module):
    """NetVLAD (Arandjelovic et al.) as used by CVM-Net section 3.3, eq. (1).

    V(k) = sum_j a_k(u_j) (u_j - c_k) with soft assignment a_k(u) = softmax_k(w_k.u + b_k) over
    the L2-normalised local features u_j; then intra-normalisation (each V(k) to unit L2) and
    L2 normalisation of the flattened K*C vector, as in the NetVLAD paper.
    """

    def __init__(self, channels: int, clusters: int = 64) -> None:
        super().__init__()
        self.assign = nn.Conv2d(channels, clusters, kernel_size=1)
        self.centroids = nn.Parameter(torch.rand(clusters, channels))
        self.clusters = clusters

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, h, w) -> (B, K*C), L2-normalised; k-major (V(0) first)."""
        x = F.normalize(x, dim=1)
        a = F.softmax(self.assign(x).flatten(2), dim=1)  # (B, K, N)
        u = x.flatten(2)  # (B, C, N)
        vlad = torch.bmm(a, u.transpose(1, 2)) - a.sum(dim=2).unsqueeze(2) * self.centroids  # (B, K, C)
        vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.flatten(1), dim=1)


class SAFA(nn.Module):
    """Spatial-aware feature aggregation (SAFA, Shi et al. 2019) as used by VIGOR section 4.1.

    Per block k: max over channels -> m (B, hw); two FC layers hw -> hw/2 -> hw (no activation
    between them, as in VIGOR's `spatial_aware`) give a spatial weighting w_k (B, hw); the block's
    output is sum_i w_k[i] * x[:, :, i] (B, C). The K blocks are concatenated k-major into
    (B, K*C). `pool` first max-pools by that factor so the map has stride 32 (VIGOR's code
    max-pools VGG16's conv5_3 2x2). Initialisation as VIGOR: weights N(0, 0.005) truncated at
    2 sigma, biases 0.1. The FC acts on the flattened map, so the input size is fixed.
    """

    def __init__(self, map_hw: tuple[int, int], blocks: int = 8, pool: int = 1) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(pool, ceil_mode=True) if pool > 1 else nn.Identity()
        h = -(-map_hw[0] // pool)
        w = -(-map_hw[1] // pool)
        n = h * w
        hidden = max(1, n // 2)
        self.map_hw = (h, w)
        self.weight1 = nn.Parameter(torch.empty(blocks, n, hidden))
        self.bias1 = nn.Parameter(torch.full((blocks, 1, hidden), 0.1))
        self.weight2 = nn.Parameter(torch.empty(blocks, hidden, n))
        self.bias2 = nn.Parameter(torch.full((blocks, 1, n), 0.1))
        for weight in (self.weight1, self.weight2):
            nn.init.trunc_normal_(weight, std=0.005, a=-0.01, b=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H', W') -> (B, K*C), not normalised; H', W' as given at construction."""
        x = self.pool(x)  # (B, C, h, w)
        m = x.amax(dim=1).flatten(1)[:, None, None, :]  # (B, 1, 1, hw)
        w = torch.matmul(torch.matmul(m, self.weight1) + self.bias1, self.weight2) + self.bias2  # (B, K, 1, hw)
        w = w.squeeze(2)  # (B, K, hw)
        return torch.bmm(w, x.flatten(2).transpose(1, 2)).flatten(1)  # (B, K, C) -> (B, K*C)


class OffsetHead(nn.Module):
    """VIGOR section 4.3 MLP: concat(ground, aerial) -> FC -> ReLU -> FC -> (dE, dN) / L."""

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, g: Tensor, a: Tensor) -> Tensor:
        """g (B, D), a (B, D) -> (B, 2) = (dE, dN) / L, camera minus tile centre, east/north."""
        return self.fc2(F.relu(self.fc1(torch.cat([g, a], dim=1))))


def polar_grid(size_hw: tuple[int, int]) -> Tensor:
    """(1, Hp, Wp, 2) grid_sample coordinates of the tile's polar image (SAFA, Shi et al. 2019).

    Row 0 samples the tile's edge, the last row its centre (like a panorama's ground half, far at
    the horizon, near at the bottom); column j looks along bearing (j + 0.5) / Wp * 360 - 180 deg
    from north, clockwise, as the columns of a north-centred VIGOR panorama. The tile is north-up.
    """
    h, w = size_hw
    radius = 1.0 - (torch.arange(h, dtype=torch.float64) + 0.5) / h
    bearing = (torch.arange(w, dtype=torch.float64) + 0.5) / w * 2 * torch.pi - torch.pi
    x = radius[:, None] * torch.sin(bearing)[None, :]
    y = -radius[:, None] * torch.cos(bearing)[None, :]
    return torch.stack([x, y], dim=-1).unsqueeze(0).float()


class CrossViewModel(nn.Module):
    """Two unshared backbones, per-view aggregation, shared head, offset MLP (module docstring)."""

    def __init__(self, config: ModelConfig, name: str = "custom") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.ground_backbone = create_backbone(config.backbone)
        self.aerial_backbone = create_backbone(config.backbone)
        self.ground_feature_shape = _output_shape(self.ground_backbone, config.ground_size)
        polar = config.polar_size != (0, 0)
        self.aerial_feature_shape = _output_shape(self.aerial_backbone, config.polar_size if polar else config.aerial_size)
        # Fixed sampling grid of the polar transform (a buffer, so it travels to the device and to ONNX).
        self.register_buffer("polar_grid", polar_grid(config.polar_size) if polar else torch.zeros(0), persistent=False)
        channels = self.ground_feature_shape[0]
        stride = int(self.ground_backbone.feature_info.reduction()[-1])
        self.feature_stride = stride

        if config.aggregator == "gem_fc":
            self.ground_pool: nn.Module = nn.Identity()
            self.aerial_pool: nn.Module = nn.Identity()
            self.head: nn.Module = GeMFC(channels, config.dim)
        elif config.aggregator == "netvlad":
            self.ground_pool = NetVLAD(channels, config.netvlad_clusters)
            self.aerial_pool = NetVLAD(channels, config.netvlad_clusters)
            self.head = nn.Linear(config.netvlad_clusters * channels, config.dim)
        else:
            pool = max(1, _SAFA_STRIDE // stride)
            self.ground_pool = SAFA(self.ground_feature_shape[1:], config.safa_blocks, pool)
            self.aerial_pool = SAFA(self.aerial_feature_shape[1:], config.safa_blocks, pool)
            width = config.safa_blocks * channels
            self.head = nn.Identity() if config.dim == width else nn.Linear(width, config.dim)
        self.offset_head = OffsetHead(config.dim, config.offset_hidden)

    @property
    def descriptor_dim(self) -> int:
        return self.config.dim

    def ground_outputs(self, pano: Tensor) -> tuple[Tensor, Tensor]:
        """pano (B, 3, Hg, Wg) -> (descriptor (B, D) L2-normalised, features (B, C, hg, wg))."""
        features = self.ground_backbone(pano)[0]
        return F.normalize(self.head(self.ground_pool(features)), dim=1), features

    def _aerial_input(self, sat: Tensor) -> Tensor:
        """sat (B, 3, Ha, Wa) -> itself, or its polar image (B, 3, Hp, Wp) when polar_size is set."""
        if self.polar_grid.numel() == 0:
            return sat
        grid = self.polar_grid.expand(sat.shape[0], -1, -1, -1)
        return F.grid_sample(sat, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def aerial_outputs(self, sat: Tensor) -> tuple[Tensor, Tensor]:
        """sat (B, 3, Ha, Wa) -> (descriptor (B, D) L2-normalised, features (B, C, ha, wa))."""
        features = self.aerial_backbone(self._aerial_input(sat))[0]
        return F.normalize(self.head(self.aerial_pool(features)), dim=1), features

    def encode_ground(self, pano: Tensor) -> Tensor:
        """pano (B, 3, Hg, Wg) -> (B, D) L2-normalised descriptor."""
        return self.ground_outputs(pano)[0]

    def encode_aerial(self, sat: Tensor) -> Tensor:
        """sat (B, 3, Ha, Wa) -> (B, D) L2-normalised descriptor."""
        return self.aerial_outputs(sat)[0]

    def ground_features(self, pano: Tensor) -> Tensor:
        """pano (B, 3, Hg, Wg) -> (B, C, hg, wg) last conv map of the ground backbone."""
        return self.ground_backbone(pano)[0]

    def aerial_features(self, sat: Tensor) -> Tensor:
        """sat (B, 3, Ha, Wa) -> (B, C, ha, wa) last conv map of the aerial backbone."""
        return self.aerial_backbone(self._aerial_input(sat))[0]

    def offset(self, g: Tensor, a: Tensor) -> Tensor:
        """g (B, D), a (B, D) descriptors -> (B, 2) = (dE, dN) / L of the camera from the tile centre."""
        return self.offset_head(g, a)

    def forward(self, pano: Tensor, sat: Tensor) -> tuple[Tensor, Tensor]:
        """pano (B, 3, Hg, Wg), sat (B', 3, Ha, Wa) -> ((B, D), (B', D)) L2-normalised descriptors."""
        return self.encode_ground(pano), self.encode_aerial(sat)


# Named presets: ModelConfig overrides. Descriptor sizes follow the papers where there is one.
MODELS: dict[str, dict[str, Any]] = {
    # CPU/Jetson model: MobileNetV3-small trains 7x faster than -large on 2 CPU cores (0.4 s per
    # 32-pair step at 128x256 / 128x128), which is what a 30-minute CPU budget needs.
    "small": {"backbone": "mobilenetv3_small_100", "aggregator": "gem_fc", "dim": 256},
    # VIGOR section 5: VGG16 + 8 SAFA blocks, 8 x 512 = 4096-d.
    "vgg16_safa": {"backbone": "vgg16", "aggregator": "safa", "dim": 4096, "safa_blocks": 8},
    # CVM-Net-I: VGG16 + NetVLAD (64 clusters) + FC to 4096 (VIGOR's CVM-Net code).
    "vgg16_netvlad": {"backbone": "vgg16", "aggregator": "netvlad", "dim": 4096, "netvlad_clusters": 64},
    "resnet50_gem": {"backbone": "resnet50", "aggregator": "gem_fc", "dim": 512},
    "convnext_tiny_gem": {"backbone": "convnext_tiny", "aggregator": "gem_fc", "dim": 512},
    # The small model with SAFA's geometry: the tile polar-resampled about its centre so that its
    # columns line up with the panorama's azimuths, then spatial-aware blocks (position kept).
    "small_polar": {"backbone": "mobilenetv3_small_100", "aggregator": "safa", "dim": 512, "safa_blocks": 8,
                    "polar_size": (128, 256)},
}

