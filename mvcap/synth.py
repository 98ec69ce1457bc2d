"""Synthetic studio: camera rigs, textured subjects, realistic frames and ground truth.

World frame of every synthetic scene: **Y up, the floor is the plane y = 0**, the capture
area is centred on the origin. Cameras stand on a ring around it and look at the subject.

A *session* is one person filmed by one rig (one ``.h5`` file written through
:mod:`mvcap.capture`); a *benchmark* is a directory of sessions, one per subject, all
derived deterministically from ``SceneConfig.seed`` (same seed -> identical arrays).

Image formation for one frame, per view:

1. the posed, textured body is rasterised into the *undistorted pinhole* image (with a
   margin so that lens distortion never samples outside it) and shaded with a key and a
   fill light fixed in the world (Lambert) plus ambient;
2. it is composited (soft 1-px edge) over a static procedural studio: a floor (tiles /
   planks / concrete / mat, tape marks, stains) and a cylindrical wall (panels, posters,
   gradient), with the body's soft shadow on the floor;
3. per-camera exposure and white balance, vignetting;
4. the rig's lens distortion is applied (``cv2.remap`` with, for every distorted pixel,
   its undistorted position from :func:`mvcap.cameras.undistort_points`), so
   :func:`mvcap.render.undistort_images` recovers the pinhole image;
5. optional Gaussian blur and sensor noise (signal-dependent + read noise), uint8.

Ground truth written per session: body parameters, joints (T, 24, 3), silhouettes in the
distorted photo space ``masks`` (T, V, H, W) uint8, and ``visibility`` (T, V, N) bool
(vertex visible in the view: in front of the z-buffer within 2 cm).

Board videos for calibration are made by :mod:`mvcap.synth_board`; body poses and motions by
:mod:`mvcap.motions`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from numba import njit

from . import motions as M
from .cameras import Camera, Rig, undistort_points
from .initialize import InitConfig
from .motions import PerturbConfig
from .poses import SMPL_PARENTS
from .synth_detect import DetectorSimConfig

__all__ = [
    "RingConfig",
    "RigConfig",
    "SubjectConfig",
    "SceneConfig",
    "load_scene_config",
    "make_ring_rig",
    "make_subject",
    "sample_betas",
    "make_texture",
    "Studio",
    "make_studio",
    "render_frame",
    "distort_image",
    "generate_session",
    "generate_benchmark",
    "contact_sheet",
]

MOTIONS = ("poses", "walk", "squat", "reach", "turn", "mixed")
INIT_MODES = ("perturb", "keypoints")


# ==========================================================================================
# configs
# ==========================================================================================
@dataclass(frozen=True)
class RingConfig:
    """One ring of a multi-ring rig (``[[rig.rings]]``): its own camera count, distance,
    height and field of view; the other settings come from the enclosing :class:`RigConfig`."""

    num_cameras: int = 4
    radius_m: tuple[float, float] = (3.0, 4.0)
    height_m: tuple[float, float] = (1.0, 2.2)
    hfov_deg: tuple[float, float] = (40.0, 50.0)


@dataclass(frozen=True)
class RigConfig:
    """A ring of cameras around the capture area (ranges are sampled uniformly).

    radius_m: camera distance from the vertical axis through the origin.
    height_m: camera centre height above the floor.
    hfov_deg: horizontal field of view (sets the focal length for any image size;
      40-50 deg at 512 px is f = 700-550 px: a standing person fills ~50-70 % of the height).
    image_size: (width, height) pixels.
    distortion_k1/k2: radial coefficients; tangential_p: range of p1 and p2.
    principal_offset_frac: max principal-point offset from the image centre, as a fraction
      of the image width/height.
    look_at_height_m: height of the aim point above the floor; look_at_jitter_m: its
      random offset; azimuth_jitter_deg: deviation from even spacing on the ring;
      roll_deg: std of the camera roll.
    rings: optional several rings (e.g. 4 cameras at 1.0-1.4 m and 4 at 2.2-2.6 m); when
      given they replace num_cameras / radius_m / height_m / hfov_deg (cameras are numbered
      ring after ring; each ring is evenly spaced, rotated by half a step from the previous).
    """

    num_cameras: int = 4
    radius_m: tuple[float, float] = (3.0, 4.0)
    height_m: tuple[float, float] = (1.0, 2.2)
    hfov_deg: tuple[float, float] = (40.0, 50.0)
    image_size: tuple[int, int] = (512, 512)
    distortion_k1: tuple[float, float] = (-0.1, 0.1)
    distortion_k2: tuple[float, float] = (-0.02, 0.02)
    tangential_p: tuple[float, float] = (-0.0005, 0.0005)
    principal_offset_frac: float = 0.015
    look_at_height_m: float = 1.0
    look_at_jitter_m: float = 0.1
    azimuth_jitter_deg: float = 12.0
    roll_deg: float = 1.5
    rings: tuple[RingConfig, ...] = ()

    @property
    def total_cameras(self) -> int:
        """Cameras of the whole rig (all rings)."""
        return sum(r.num_cameras for r in self.rings) if self.rings else self.num_cameras

    def __post_init__(self):  # a plain ValueError here reads as a ConfigError naming the file
        if self.num_cameras < 1:
            raise ValueError(f"num_cameras must be >= 1, got {self.num_cameras}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (width, height) >= 1 pixel, got {self.image_size}")


@dataclass(frozen=True)
class SubjectConfig:
    """Random subjects: betas ~ N(0, std) clipped, procedural clothing texture."""

    betas_std: tuple[float, float] = (1.0, 0.7)  # (first two components, the rest)
    betas_clip: float = 2.5
    texture_size: int = 512


@dataclass(frozen=True)
class SceneConfig:
    """A synthetic benchmark: ``num_subjects`` sessions of ``frames_per_subject`` frames.

    motion: "poses" (independent varied poses per frame, ``pose_style``), or a motion kind
      of :func:`mvcap.motions.motion_sequence` ("walk", "squat", "reach", "turn", "mixed").
    position_jitter_m: for "poses", the root's random horizontal offset from the centre.
    new_rig_per_subject: draw a new rig for every session (else one rig for all).
    noise_std: (lo, hi) read-noise std in 8-bit levels; shot_noise: signal-dependent part.
    blur_prob / blur_sigma_px: chance of a Gaussian blur per view and its sigma range.
    exposure: range of a per-camera gain; white_balance_std: per-channel gain std;
    vignetting: range of the corner darkening.
    ambient / key_light / fill_light: lighting strength ranges.
    partial_out_of_view_prob: chance per camera that it aims off the subject so that part
      of the body leaves the frame.
    init_view: the view whose optical axis carries the larger depth error of the initial
      estimates (-1: isotropic).
    init: how the stored initial estimates are made: "perturb" (the ground truth perturbed
      like a regression network's output, ``[perturb]``) or "keypoints" (mvcap's own keypoint
      path: simulated 2D detections with detector errors, ``[detector]``, stored as the
      session's detections, then robust triangulation and the init fit, ``[init_fit]``; see
      :mod:`mvcap.synth_detect`).
    """

    num_subjects: int = 4
    frames_per_subject: int = 25
    fps: float = 25.0
    motion: str = "poses"
    pose_style: str = "varied"
    position_jitter_m: float = 0.3
    seed: int = 0
    new_rig_per_subject: bool = True
    noise_std: tuple[float, float] = (1.0, 3.0)
    shot_noise: float = 0.6
    blur_prob: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.3, 1.0)
    exposure: tuple[float, float] = (0.8, 1.2)
    white_balance_std: float = 0.05
    vignetting: tuple[float, float] = (0.0, 0.3)
    ambient: tuple[float, float] = (0.35, 0.5)
    key_light: tuple[float, float] = (0.45, 0.7)
    fill_light: tuple[float, float] = (0.1, 0.25)
    partial_out_of_view_prob: float = 0.1
    init_view: int = 0
    rig: RigConfig = field(default_factory=RigConfig)
    subject: SubjectConfig = field(default_factory=SubjectConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    init: str = "perturb"
    detector: DetectorSimConfig = field(default_factory=DetectorSimConfig)
    init_fit: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self):
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {self.init!r}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")
        if self.num_subjects < 1 or self.frames_per_subject < 1:
            raise ValueError("num_subjects and frames_per_subject must be >= 1")


def load_scene_config(path=None, overrides=None) -> SceneConfig:
    """A :class:`SceneConfig` from a TOML file (e.g. ``configs/bench/standard.toml``)."""
    from .config import load_config

    return load_config(SceneConfig, path, overrides)


def _config_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _u(rng, lohi) -> float:
    lo, hi = lohi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


# ==========================================================================================
# rig
# ==========================================================================================
def _look_at(C, target, roll=0.0) -> np.ndarray:
    f = target - C
    f = f / np.linalg.norm(f)
    up = np.array([0.0, 1.0, 0.0])
    x = np.cross(f, up)
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    R = np.stack([x, y, f])  # rows: camera axes in world coordinates (x right, y down, z fwd)
    c, s = math.cos(roll), math.sin(roll)
    Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    return Rz @ R


def make_ring_rig(
    cfg: RigConfig, rng: np.random.Generator, off_subject: Sequence[float] | None = None
) -> Rig:
    """Cameras on a ring looking at the capture centre (Y-up world, floor y = 0).

    Varied radii, heights, fields of view, small radial/tangential distortion and principal
    point offsets. ``off_subject``: optional per-camera aim offset in units of the half
    field of view (0 = aimed at the subject; 0.6 puts the subject's centre 60 % of the way
    to the image edge), used for partially out-of-view subjects."""
    W, H = (int(s) for s in cfg.image_size)
    rings = cfg.rings or (RingConfig(cfg.num_cameras, cfg.radius_m, cfg.height_m, cfg.hfov_deg),)
    if any(int(r.num_cameras) < 1 for r in rings):
        raise ValueError("num_cameras must be >= 1 (for every ring)")
    az0 = rng.uniform(0, 2 * np.pi)
    # (ring, azimuth) per camera; ring k is turned by half a step from ring k - 1
    slots = [
        (ring, az0 + 2 * np.pi * (i + 0.5 * k) / ring.num_cameras)
        for k, ring in enumerate(rings)
        for i in range(ring.num_cameras)
    ]
    cams = []
    for i, (ring, az_even) in enumerate(slots):
        az = az_even + np.deg2rad(rng.normal(0, cfg.azimuth_jitter_deg / 2))
        r, h = _u(rng, ring.radius_m), _u(rng, ring.height_m)
        C = np.array([r * math.cos(az), h, r * math.sin(az)])
        target = np.array([0.0, cfg.look_at_height_m, 0.0]) + rng.normal(0, cfg.look_at_jitter_m, 3)
        hfov = np.deg2rad(_u(rng, ring.hfov_deg))
        fx = (W / 2) / math.tan(hfov / 2)
        if off_subject is not None and off_subject[i]:
            # rotate the aim about the vertical by a fraction of the half field of view
            ang = off_subject[i] * hfov / 2 * rng.choice([-1, 1])
            d = target - C
            ca, sa = math.cos(ang), math.sin(ang)
            d = np.array([ca * d[0] + sa * d[2], d[1], -sa * d[0] + ca * d[2]])
            target = C + d
        R = _look_at(C, target, np.deg2rad(rng.normal(0, cfg.roll_deg)))
        fy = fx * (1 + rng.normal(0, 0.002))
        cx = (W - 1) / 2 + rng.uniform(-1, 1) * cfg.principal_offset_frac * W
        cy = (H - 1) / 2 + rng.uniform(-1, 1) * cfg.principal_offset_frac * H
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        dist = np.array(
            [
                _u(rng, cfg.distortion_k1),
                _u(rng, cfg.distortion_k2),
                _u(rng, cfg.tangential_p),
                _u(rng, cfg.tangential_p),
                0.0,
            ]
        )
        cams.append(Camera(f"cam{i:02d}", K, dist, R, -R @ C, (W, H)))
    return Rig(tuple(cams))


# ==========================================================================================
# subjects: shape and procedural clothing texture
# ==========================================================================================
def sample_betas(
    rng: np.random.Generator, cfg: SubjectConfig = SubjectConfig(), num_betas: int = 10
) -> np.ndarray:
    """(num_betas,) float32 shape: N(0, std) (first two components get ``betas_std[0]``),
    clipped to +-``betas_clip``."""
    std = np.full(num_betas, cfg.betas_std[1])
    std[:2] = cfg.betas_std[0]
    return np.clip(rng.standard_normal(num_betas) * std, -cfg.betas_clip, cfg.betas_clip).astype(
        np.float32
    )


@njit(cache=True)
def _raster_uv(uv_px, uv_faces, faces, vattr, H, W, out, label_out, vlabel):
    """Rasterise UV triangles; interpolate per-vertex attributes (3D positions) per texel."""
    for f in range(uv_faces.shape[0]):
        a, b, c = uv_faces[f, 0], uv_faces[f, 1], uv_faces[f, 2]
        ax, ay = uv_px[a, 0], uv_px[a, 1]
        bx, by = uv_px[b, 0], uv_px[b, 1]
        cx, cy = uv_px[c, 0], uv_px[c, 1]
        den = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
        if abs(den) < 1e-12:
            continue
        x0 = max(int(math.floor(min(ax, bx, cx))), 0)
        x1 = min(int(math.ceil(max(ax, bx, cx))), W - 1)
        y0 = max(int(math.floor(min(ay, by, cy))), 0)
        y1 = min(int(math.ceil(max(ay, by, cy))), H - 1)
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                l0 = ((by - cy) * (x - cx) + (cx - bx) * (y - cy)) / den
                l1 = ((cy - ay) * (x - cx) + (ax - cx) * (y - cy)) / den
                l2 = 1.0 - l0 - l1
                if l0 < -1e-6 or l1 < -1e-6 or l2 < -1e-6:
                    continue
                va, vb, vc = faces[f, 0], faces[f, 1], faces[f, 2]
                for k in range(3):
                    out[y, x, k] = l0 * vattr[va, k] + l1 * vattr[vb, k] + l2 * vattr[vc, k]
                if l0 >= l1 and l0 >= l2:
                    label_out[y, x] = vlabel[va]
                elif l1 >= l2:
                    label_out[y, x] = vlabel[vb]
                else:
                    label_out[y, x] = vlabel[vc]


def _texel_positions(model, size: int):
    """Per-texel rest-pose (mean-shape) 3D position (S, S, 3), dominant joint label (S, S)
    and a validity mask; texels outside any UV triangle take their nearest valid texel."""
    from scipy import ndimage

    tpl = model.template_vertices()[0].detach().double().numpy()
    label = model.weights.detach().numpy().argmax(1).astype(np.int64)
    uvs = model.uvs.detach().double().numpy()
    # render.py convention: texel centres at half-integers, row 0 = top (v = 1)
    uv_px = np.stack([uvs[:, 0] * size - 0.5, (1 - uvs[:, 1]) * size - 0.5], -1)
    pos = np.zeros((size, size, 3))
    lab = np.full((size, size), -1, np.int64)
    _raster_uv(
        uv_px,
        model.uv_faces.numpy().astype(np.int64),
        model.faces.numpy().astype(np.int64),
        tpl,
        size,
        size,
        pos,
        lab,
        label,
    )
    valid = lab >= 0
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    pos = pos[idx[0], idx[1]]
    lab = lab[idx[0], idx[1]]
    return pos, lab, valid


_SKIN = (
    np.array(
        [
            [255, 224, 196],
            [241, 194, 160],
            [224, 172, 130],
            [198, 134, 96],
            [160, 104, 70],
            [120, 76, 50],
            [88, 56, 38],
        ]
    )
    / 255.0
)
_HAIR = (
    np.array(
        [[25, 20, 18], [60, 40, 25], [110, 75, 40], [190, 150, 90], [140, 60, 30], [160, 160, 160]]
    )
    / 255.0
)
_CLOTH = (
    np.array(
        [
            [200, 30, 40],
            [30, 70, 160],
            [240, 240, 235],
            [25, 25, 30],
            [40, 130, 70],
            [240, 190, 40],
            [120, 40, 140],
            [250, 130, 40],
            [100, 170, 220],
            [130, 130, 135],
            [230, 120, 160],
            [90, 60, 40],
            [0, 140, 140],
            [180, 200, 60],
        ]
    )
    / 255.0
)
_PANTS = (
    np.array(
        [
            [40, 60, 110],
            [30, 30, 35],
            [150, 130, 100],
            [90, 90, 95],
            [60, 80, 50],
            [70, 100, 150],
            [120, 50, 40],
            [200, 200, 195],
        ]
    )
    / 255.0
)


def _wave_noise(rng, p, n=24, fmin=4.0, fmax=90.0, slope=0.5):
    """Multi-scale band-limited noise over 3D points p (..., 3) metres, ~unit std."""
    freqs = np.exp(rng.uniform(np.log(fmin), np.log(fmax), n))
    dirs = rng.standard_normal((n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    ph = rng.uniform(0, 2 * np.pi, n)
    amps = freqs**-slope
    p32 = np.asarray(p, np.float32)
    out = np.zeros(p.shape[:-1], np.float32)
    for f, d, a, q in zip(freqs, dirs, amps, ph, strict=True):
        arg = p32 @ (2 * np.pi * f * d).astype(np.float32)
        arg += np.float32(q)
        out += np.float32(a) * np.sin(arg)
    return (out / np.sqrt((amps**2).sum() / 2)).astype(np.float64)


def _pattern(rng, p, kind):
    """A clothing pattern in [0, 1] over 3D rest positions p (..., 3)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    if kind == "stripes":
        f = rng.uniform(8, 25)
        return (np.sin(2 * np.pi * f * y + rng.uniform(0, 6)) > rng.uniform(-0.3, 0.3)).astype(
            float
        )
    if kind == "vstripes":
        f = rng.uniform(10, 30)
        ang = np.arctan2(x, z + 0.02)
        return (np.sin(f * ang * 0.3 + 2 * np.pi * f * x) > 0).astype(float)
    if kind == "checks":
        f = rng.uniform(6, 18)
        return ((np.floor(f * (x + 5)) + np.floor(f * (y + 5)) + np.floor(f * (z + 5))) % 2).astype(
            float
        )
    if kind == "dots":
        f = rng.uniform(10, 25)
        q = (p * f) % 1.0 - 0.5
        return (np.linalg.norm(q, axis=-1) < rng.uniform(0.2, 0.35)).astype(float)
    if kind == "camo":
        return (_wave_noise(rng, p, 12, 3, 15, 0.8) > 0.2).astype(float) + 0.5 * (
            _wave_noise(rng, p, 12, 6, 25, 0.8) > 0.6
        )
    if kind == "plaid":
        f = rng.uniform(5, 12)
        a = (np.sin(2 * np.pi * f * y) > 0.6).astype(float)
        b = (np.sin(2 * np.pi * f * (x + z)) > 0.6).astype(float)
        return np.clip(0.6 * a + 0.6 * b, 0, 1)
    return np.zeros(p.shape[:-1])  # plain


def make_texture(rng: np.random.Generator, model, size: int = 512, return_meta: bool = False):
    """A procedural UV texture (size, size, 3) uint8 for the body model's UV layout.

    Regions come from each texel's 3D rest-pose position (T-pose: arms along +-X, legs
    along -Y) and its dominant skinning joint: skin (face, neck, hands, bare arms/legs),
    hair, a top (T-shirt / long sleeves / tank top) and a bottom (trousers / shorts /
    skirt-length) with patterns (stripes, checks, dots, camo, plaid, plain), a chest logo
    block, belt, shoes with soles, and multi-scale noise everywhere (texture detail at
    several scales, for optical flow)."""
    pos, lab, _ = _texel_positions(model, size)
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    ax = np.abs(x)
    J = model.rest_joints()[0].detach().double().numpy()
    head, neck, sh, wr = J[15], J[12], J[16], J[20]
    knee, ankle = J[4], J[7]
    meta = {}
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.93, 1.05, 3)
    hair = _HAIR[rng.integers(len(_HAIR))]
    top_c = _CLOTH[rng.integers(len(_CLOTH))]
    top_c2 = _CLOTH[rng.integers(len(_CLOTH))]
    if np.abs(top_c - top_c2).sum() < 0.4:
        top_c2 = 1 - top_c2 * 0.8
    pants_c = _PANTS[rng.integers(len(_PANTS))]
    pants_c2 = _CLOTH[rng.integers(len(_CLOTH))]
    shoe_c = [
        np.array([0.12, 0.12, 0.13]),
        np.array([0.92, 0.92, 0.9]),
        _CLOTH[rng.integers(len(_CLOTH))],
    ][rng.integers(3)]

    img = np.ones(pos.shape) * skin
    img *= (1 + 0.04 * _wave_noise(rng, pos, 16, 20, 150))[..., None]  # skin detail

    # hair: top and back of the head
    hair_len = rng.uniform(0.0, 0.12)
    is_head = (lab == 15) | ((lab == 12) & (y > neck[1] + 0.03))
    hair_mask = is_head & (
        (y > head[1] + 0.07) | ((z < head[2] - 0.01) & (y > head[1] - 0.02 - hair_len))
    )
    hair_mask |= is_head & (y > head[1] + 0.035) & (z < head[2] + 0.07) & (ax > 0.045)
    hair_tex = (
        hair * (1 + 0.25 * _wave_noise(rng, pos * np.array([3, 0.3, 3]), 16, 30, 200))[..., None]
    )
    img = np.where(hair_mask[..., None], hair_tex, img)
    # face: eyes, brows, mouth as dark marks on the front of the head
    front = is_head & (z > head[2] + 0.05)
    for sx in (-1, 1):
        eye = front & (((x - sx * 0.032) / 0.012) ** 2 + ((y - head[1] - 0.035) / 0.006) ** 2 < 1)
        img[eye] = [0.1, 0.08, 0.07]
        brow = front & (np.abs(x - sx * 0.033) < 0.017) & (np.abs(y - head[1] - 0.052) < 0.0035)
        img[brow] = hair * 0.7
    mouth = front & (np.abs(x) < 0.022) & (np.abs(y - head[1] + 0.022) < 0.004)
    img[mouth] = skin * np.array([0.7, 0.4, 0.4])

    # top
    waist_y = J[0, 1] + rng.uniform(0.02, 0.09)
    sleeve = rng.choice(["short", "long", "tank"], p=[0.45, 0.4, 0.15])
    sleeve_x = {
        "short": sh[0] + rng.uniform(0.08, 0.18),
        "long": wr[0] - 0.02,
        "tank": sh[0] - 0.02,
    }[sleeve]
    neck_y = neck[1] - rng.uniform(0.02, 0.06)
    torso = (y > waist_y) & (y < neck_y) & np.isin(lab, [0, 3, 6, 9, 13, 14, 16, 17, 12])
    arms = np.isin(lab, [13, 14, 16, 17, 18, 19, 20, 21]) & (ax < sleeve_x) & (ax > 0.1)
    top_mask = (torso | arms) & ~is_head
    top_kind = rng.choice(["plain", "stripes", "checks", "dots", "camo", "plaid", "vstripes"])
    pat = _pattern(rng, pos, top_kind)
    top = top_c * (1 - pat[..., None]) + top_c2 * pat[..., None]
    top *= (1 + 0.07 * _wave_noise(rng, pos, 24, 8, 120))[..., None]
    # logo / colour block on the chest or back
    cy_logo = neck[1] - rng.uniform(0.1, 0.18)
    side = 1 if rng.random() < 0.7 else -1
    lw, lh = rng.uniform(0.05, 0.1), rng.uniform(0.03, 0.07)
    logo = (np.abs(x) < lw) & (np.abs(y - cy_logo) < lh) & (side * z > 0.05)
    glyph = _wave_noise(rng, pos, 10, 40, 80, 0.0) > 0.3
    logo_c = _CLOTH[rng.integers(len(_CLOTH))]
    top = np.where(
        (logo & glyph)[..., None], logo_c, np.where(logo[..., None], 1 - logo_c * 0.6, top)
    )
    img = np.where(top_mask[..., None], top, img)

    # bottom
    bottom = rng.choice(["trousers", "shorts", "skirt"], p=[0.6, 0.25, 0.15])
    hem_y = {
        "trousers": ankle[1] + 0.03,
        "shorts": knee[1] + rng.uniform(0.08, 0.2),
        "skirt": knee[1] + rng.uniform(-0.02, 0.1),
    }[bottom]
    legs = (y <= waist_y) & (y > hem_y) & np.isin(lab, [0, 1, 2, 3, 4, 5, 7, 8])
    bot_kind = rng.choice(["plain", "plain", "denim", "checks", "stripes"])
    if bot_kind == "denim":
        pat = 0.5 + 0.5 * np.sin(2 * np.pi * 160 * (y + x + z))
        bot = pants_c * (0.85 + 0.25 * pat[..., None])
    else:
        pat = _pattern(rng, pos, bot_kind)
        bot = pants_c * (1 - 0.5 * pat[..., None]) + pants_c2 * 0.5 * pat[..., None]
    bot *= (1 + 0.08 * _wave_noise(rng, pos, 24, 8, 120))[..., None]
    # seams down the outer leg and a belt
    seam = (np.abs(np.abs(x) - np.abs(J[4, 0]) - 0.055) < 0.004) & (y < waist_y - 0.05)
    bot = np.where(seam[..., None], bot * 0.6, bot)
    belt = (np.abs(y - waist_y + 0.02) < 0.02) & (rng.random() < 0.6)
    bot = np.where(
        belt[..., None],
        np.array([0.15, 0.1, 0.08]) * (1 + 0.5 * (np.abs(x) < 0.025))[..., None],
        bot,
    )
    img = np.where(legs[..., None], bot, img)

    # socks/shoes
    shoe_top = ankle[1] + rng.uniform(0.02, 0.07)
    shoes = np.isin(lab, [4, 5, 7, 8, 10, 11]) & (y < shoe_top)
    shoe = shoe_c * (1 + 0.08 * _wave_noise(rng, pos, 16, 20, 150))[..., None]
    sole = y < ankle[1] - 0.075
    shoe = np.where(sole[..., None], 1 - 0.85 * shoe_c, shoe)
    laces = (
        (z > ankle[2] + 0.05) & (np.abs(x - np.sign(x) * ankle[0]) < 0.015) & ((y * 120) % 1 < 0.4)
    )
    shoe = np.where(laces[..., None], 1 - shoe_c, shoe)
    img = np.where(shoes[..., None], shoe, img)

    meta.update(
        top=str(sleeve), top_pattern=str(top_kind), bottom=str(bottom), bottom_pattern=str(bot_kind)
    )
    tex = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return (tex, meta) if return_meta else tex


def make_subject(rng: np.random.Generator, model, name: str, cfg: SubjectConfig = SubjectConfig()):
    """A random :class:`mvcap.subject.Subject`: shape (see :func:`sample_betas`) plus a
    procedural clothing texture (see :func:`make_texture`)."""
    from .subject import Subject

    betas = sample_betas(rng, cfg, 10)
    tex, meta = make_texture(rng, model, cfg.texture_size, return_meta=True)
    return Subject(
        name=name,
        betas=betas,
        texture=tex,
        gender="neutral",
        meta={"source": "mvcap.synth", **meta},
    )


# ==========================================================================================
# studio background
# ==========================================================================================
@dataclass(frozen=True)
class Studio:
    """A static procedural studio and its lights. Per camera: the background image in the
    padded pinhole image and the floor coordinates of its floor pixels."""

    background: tuple  # per view (Hp, Wp, 3) float32
    floor_xz: tuple  # per view (Hp, Wp, 2) float32 world x/z (NaN off the floor)
    key_dir: np.ndarray  # (3,) unit, world, toward the light
    fill_dir: np.ndarray
    ambient: float
    key: float
    fill: float


def _padded_rig(rig: Rig, pad: int) -> Rig:
    cams = []
    for c in rig:
        K = c.K.copy()
        K[0, 2] += pad
        K[1, 2] += pad
        cams.append(
            Camera(
                c.name,
                K,
                np.zeros(5),
                c.R_world2cam,
                c.t_world2cam,
                (c.width + 2 * pad, c.height + 2 * pad),
            )
        )
    return Rig(tuple(cams))


def _distortion_pad(rig: Rig) -> int:
    """Margin (px) so that every distorted pixel's undistorted position lies inside."""
    worst = 0.0
    for c in rig:
        W, H = c.image_size
        u = np.concatenate([np.arange(W), np.arange(W), np.zeros(H), np.full(H, W - 1)])
        v = np.concatenate([np.zeros(W), np.full(W, H - 1), np.arange(H), np.arange(H)])
        uv = torch.as_tensor(np.stack([u, v], -1), dtype=torch.float64)
        und = undistort_points(Rig((c,)), uv[None])[0].numpy()
        over = max(
            -und[:, 0].min(),
            und[:, 0].max() - (W - 1),
            -und[:, 1].min(),
            und[:, 1].max() - (H - 1),
            0,
        )
        worst = max(worst, over)
    return int(math.ceil(worst)) + 3


def _studio_textures(rng):
    floor_kind = rng.choice(["tiles", "planks", "concrete", "mat"])
    fc = rng.uniform(0.25, 0.75) * np.array([1.0, 1.0, 1.0]) * rng.uniform(0.85, 1.15, 3)
    fc2 = fc * rng.uniform(0.6, 0.9)
    wall_c = rng.uniform(0.3, 0.85) * rng.uniform(0.85, 1.15, 3)
    posters = [
        (
            rng.uniform(-np.pi, np.pi),
            rng.uniform(0.8, 2.6),
            rng.uniform(0.1, 0.35),
            rng.uniform(0.3, 0.9),
            rng.uniform(0, 1, 3),
        )
        for _ in range(rng.integers(6, 14))
    ]
    tape = [
        (
            rng.uniform(-2, 2, 2),
            rng.uniform(0, np.pi),
            rng.uniform(0.3, 1.2),
            _CLOTH[rng.integers(len(_CLOTH))],
        )
        for _ in range(rng.integers(3, 8))
    ]
    noise_seed = int(rng.integers(2**31))
    return dict(
        floor_kind=floor_kind,
        fc=fc,
        fc2=fc2,
        wall_c=wall_c,
        posters=posters,
        tape=tape,
        tile=rng.uniform(0.4, 0.8),
        noise_seed=noise_seed,
        wall_r=rng.uniform(5.5, 8.0),
        wall_h=rng.uniform(3.0, 4.5),
        panel=rng.uniform(0.8, 1.6),
    )


def _floor_color(x, z, S):
    nrng = np.random.default_rng(S["noise_seed"])
    p = np.stack([x, np.zeros_like(x), z], -1)
    n = _wave_noise(nrng, p, 20, 0.5, 40, 0.4)
    kind, t = S["floor_kind"], S["tile"]
    if kind == "tiles":
        gx, gz = (x / t) % 1, (z / t) % 1
        grout = (np.minimum(gx, 1 - gx) < 0.02) | (np.minimum(gz, 1 - gz) < 0.02)
        alt = ((np.floor(x / t) + np.floor(z / t)) % 2)[..., None]
        col = S["fc"] * (1 - alt) + S["fc2"] * alt
        col = np.where(grout[..., None], col * 0.5, col)
    elif kind == "planks":
        w = t / 3
        row = np.floor(z / w)
        off = (row * 0.37) % 1
        gx = ((x / (4 * w)) + off) % 1
        seam = (np.minimum((z / w) % 1, 1 - (z / w) % 1) < 0.04) | (np.minimum(gx, 1 - gx) < 0.01)
        grain = 0.5 + 0.5 * np.sin(60 * z + 3 * np.sin(5 * x + row))
        col = (
            S["fc"]
            * np.array([1.1, 0.85, 0.6])
            * (0.85 + 0.2 * grain[..., None])
            * (0.9 + 0.2 * ((row * 0.61) % 1))[..., None]
        )
        col = np.where(seam[..., None], col * 0.55, col)
    elif kind == "mat":
        col = np.ones(x.shape + (3,)) * np.array([0.25, 0.45, 0.3]) * (S["fc"].mean() + 0.5)
    else:
        col = np.ones(x.shape + (3,)) * S["fc"]
    col = col * (1 + 0.08 * n)[..., None]
    for c, ang, L, tc in S["tape"]:  # tape marks
        d = np.array([math.cos(ang), math.sin(ang)])
        rx, rz = x - c[0], z - c[1]
        along = rx * d[0] + rz * d[1]
        across = -rx * d[1] + rz * d[0]
        m = (np.abs(along) < L / 2) & (np.abs(across) < 0.025)
        col = np.where(m[..., None], tc, col)
    r2 = x * x + z * z
    return col * (0.7 + 0.45 * np.exp(-r2 / 6.0))[..., None]  # lit capture area


def _wall_color(theta, h, S):
    nrng = np.random.default_rng(S["noise_seed"] + 1)
    p = np.stack([np.cos(theta) * 6, h, np.sin(theta) * 6], -1)
    n = _wave_noise(nrng, p, 20, 0.3, 30, 0.4)
    col = (
        np.ones(h.shape + (3,))
        * S["wall_c"]
        * (0.75 + 0.25 * np.clip(h / S["wall_h"], 0, 1))[..., None]
    )
    s = theta * S["wall_r"] / S["panel"]
    seam = np.minimum(s % 1, 1 - s % 1) < 0.012
    col = np.where(seam[..., None], col * 0.7, col)
    base = h < 0.12
    col = np.where(base[..., None], col * 0.5, col)
    for th, hc, w, hh, pc in S["posters"]:
        band = np.abs(h - hc) < hh / 2
        dth = (theta[band] - th + np.pi) % (2 * np.pi) - np.pi
        m = np.abs(dth * S["wall_r"]) < w * 2
        idx = tuple(ix[m] for ix in np.nonzero(band))
        col[idx] = pc * (0.8 + 0.2 * np.sin(40 * h[idx] + 30 * dth[m]))[:, None]
    col = col * (1 + 0.06 * n)[..., None]
    ceiling = h > S["wall_h"]
    return np.where(ceiling[..., None], np.array([0.12, 0.12, 0.13]), col)


def make_studio(rig_padded: Rig, rng: np.random.Generator, cfg: SceneConfig) -> Studio:
    """Background images of a static studio (floor y=0 + cylindrical wall) per camera."""
    S = _studio_textures(rng)
    bgs, fxz = [], []
    for c in rig_padded:
        W, H = c.image_size
        u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
        K = c.K
        yn = (v - K[1, 2]) / K[1, 1]
        xn = (u - K[0, 2]) / K[0, 0]
        d = np.stack([xn, yn, np.ones_like(xn)], -1) @ c.R_world2cam  # R^T d (row vectors)
        C = c.center_world
        with np.errstate(divide="ignore", invalid="ignore"):
            t_floor = np.where(d[..., 1] < -1e-6, -C[1] / d[..., 1], np.inf)
        P_f = C + t_floor[..., None] * d
        r_f = np.hypot(P_f[..., 0], P_f[..., 2])
        on_floor = np.isfinite(t_floor) & (r_f < S["wall_r"])
        # wall: |C_xz + t d_xz| = R
        a = d[..., 0] ** 2 + d[..., 2] ** 2
        b = 2 * (C[0] * d[..., 0] + C[2] * d[..., 2])
        cc = C[0] ** 2 + C[2] ** 2 - S["wall_r"] ** 2
        t_w = (-b + np.sqrt(np.maximum(b * b - 4 * a * cc, 0))) / (2 * np.maximum(a, 1e-12))
        P_w = C + t_w[..., None] * d
        theta = np.arctan2(P_w[..., 2], P_w[..., 0])
        img = _wall_color(theta, P_w[..., 1], S)
        fl = _floor_color(np.where(on_floor, P_f[..., 0], 0), np.where(on_floor, P_f[..., 2], 0), S)
        img = np.where(on_floor[..., None], fl, img)
        bgs.append(img.astype(np.float32))
        xz = np.where(on_floor[..., None], P_f[..., [0, 2]], np.nan).astype(np.float32)
        fxz.append(xz)
    az, el = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(35, 70))
    key_dir = np.array([math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)])
    az2, el2 = az + np.pi + rng.uniform(-0.8, 0.8), np.deg2rad(rng.uniform(20, 50))
    fill_dir = np.array(
        [math.cos(el2) * math.cos(az2), math.sin(el2), math.cos(el2) * math.sin(az2)]
    )
    return Studio(
        tuple(bgs),
        tuple(fxz),
        key_dir,
        fill_dir,
        _u(rng, cfg.ambient),
        _u(rng, cfg.key_light),
        _u(rng, cfg.fill_light),
    )


def _shadow_map(vertices: np.ndarray, key_dir: np.ndarray, extent=3.0, res=0.02):
    """(G, G) soft shadow density on the floor: body projected along the key light plus a
    contact shadow straight below; grid covers [-extent, extent]^2 in x/z."""
    G = int(2 * extent / res)
    grid = np.zeros((G, G), np.float32)
    l = key_dir / max(key_dir[1], 0.2)
    pts = vertices[:, [0, 2]] - vertices[:, 1:2] * l[[0, 2]]
    ij = np.floor((pts + extent) / res).astype(int)
    ok = (ij >= 0).all(1) & (ij < G).all(1)
    np.add.at(grid, (ij[ok, 1], ij[ok, 0]), 1.0)
    grid = np.minimum(cv2.GaussianBlur(grid, (0, 0), 2.5), 1.0) * 0.55
    low = vertices[:, 1] < 0.15
    contact = np.zeros_like(grid)
    ij = np.floor((vertices[low][:, [0, 2]] + extent) / res).astype(int)
    ok = (ij >= 0).all(1) & (ij < G).all(1)
    np.add.at(contact, (ij[ok, 1], ij[ok, 0]), 1.0)
    contact = np.minimum(cv2.GaussianBlur(contact, (0, 0), 4.0) * 2, 1.0) * 0.45
    return np.clip(grid + contact, 0, 0.8)


def _lookup_shadow(shadow, floor_xz, extent=3.0, res=0.02):
    mx = (floor_xz[..., 0] + extent) / res - 0.5
    my = (floor_xz[..., 1] + extent) / res - 0.5
    mx = np.nan_to_num(mx, nan=-10).astype(np.float32)
    my = np.nan_to_num(my, nan=-10).astype(np.float32)
    return cv2.remap(
        shadow, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


# ==========================================================================================
# image formation
# ==========================================================================================
def _distort_maps(cam: Camera, pad: int):
    W, H = cam.image_size
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    # the same fixed-point inversion as mvcap.cameras.undistort_points (agrees to 1e-12 px)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-12)
    und = cv2.undistortPoints(
        np.stack([u, v], -1).reshape(-1, 1, 2), cam.K, cam.dist, None, cam.K, criteria=crit
    ).reshape(H, W, 2)
    return (und[..., 0] + pad).astype(np.float32), (und[..., 1] + pad).astype(np.float32)


def distort_image(image: np.ndarray, cam: Camera, pad: int = 0, interpolation=cv2.INTER_LINEAR):
    """Resample a pinhole image of ``cam`` (with ``pad`` extra pixels on every side, i.e.
    shape (H + 2 pad, W + 2 pad, C)) into the camera's distorted photo (H, W, C)."""
    mx, my = _distort_maps(cam, pad)
    return cv2.remap(image, mx, my, interpolation, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class _ViewLook:
    gain: np.ndarray  # (3,) exposure x white balance
    vignette: float
    blur_sigma: float
    noise_std: float
    shot_noise: float


def _sample_looks(rng, V, cfg: SceneConfig):
    looks = []
    for _ in range(V):
        gain = _u(rng, cfg.exposure) * np.clip(
            1 + rng.normal(0, cfg.white_balance_std, 3), 0.7, 1.3
        )
        blur = _u(rng, cfg.blur_sigma_px) if rng.random() < cfg.blur_prob else 0.0
        looks.append(
            _ViewLook(gain, _u(rng, cfg.vignetting), blur, _u(rng, cfg.noise_std), cfg.shot_noise)
        )
    return looks


def render_frame(
    model,
    rig: Rig,
    subject,
    vertices: np.ndarray,
    studio: Studio,
    pad: int,
    looks,
    rng: np.random.Generator,
    maps=None,
    backend: str = "auto",
):
    """One frame in every view. vertices (N, 3) world metres (posed body). backend: the
    rasterizer (:func:`mvcap.render.rasterize`).

    Returns (images (V, H, W, 3) uint8 distorted photos, masks (V, H, W) uint8 silhouettes
    in the photo space, visibility (V, N) bool)."""
    from .render import rasterize, render_passes

    prig = _padded_rig(rig, pad)
    verts = torch.as_tensor(vertices, dtype=torch.float32)
    faces = model.faces
    frags = rasterize(prig, verts, faces, backend=backend)
    passes = render_passes(
        frags,
        prig,
        verts,
        faces,
        texture=subject.texture,
        uvs=model.uvs,
        uv_faces=model.uv_faces,
        passes=("albedo", "normal", "mask"),
    )
    albedo = passes.get("albedo").numpy()
    normal = passes.get("normal").numpy()
    mask = frags.mask.numpy()
    depth = frags.depth.numpy()
    shadow = _shadow_map(vertices, studio.key_dir)
    imgs, masks, vis = [], [], []
    for i, cam in enumerate(rig):
        pc = prig[i]
        lk = pc.R_world2cam @ studio.key_dir
        lf = pc.R_world2cam @ studio.fill_dir
        n = normal[i]
        shade = (
            studio.ambient
            + studio.key * np.clip(n @ lk, 0, None)
            + studio.fill * np.clip(n @ lf, 0, None)
        )
        fg = albedo[i] * shade[..., None]
        bg = studio.background[i].copy()
        s = _lookup_shadow(shadow, studio.floor_xz[i])
        bg *= (1 - s * studio.key / 0.7)[..., None]
        m = mask[i].astype(np.float32)
        fg_ext = np.where(m[..., None] > 0, fg, cv2.dilate(fg, np.ones((3, 3), np.uint8)))
        alpha = cv2.GaussianBlur(m, (0, 0), 0.5)
        comp = bg * (1 - alpha[..., None]) + fg_ext * alpha[..., None]
        look = looks[i]
        comp = comp * look.gain.astype(np.float32)
        Hp, Wp = comp.shape[:2]
        yy, xx = np.mgrid[0:Hp, 0:Wp].astype(np.float32)
        r2 = ((xx - pc.K[0, 2]) / (Wp / 2)) ** 2 + ((yy - pc.K[1, 2]) / (Hp / 2)) ** 2
        comp = comp * (1 - look.vignette * np.clip(r2 / 2, 0, 1))[..., None]
        mx, my = maps[i] if maps is not None else _distort_maps(cam, pad)
        photo = cv2.remap(
            comp.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if look.blur_sigma > 0:
            photo = cv2.GaussianBlur(photo, (0, 0), look.blur_sigma)
        photo = photo * 255.0
        noise = rng.standard_normal(photo.shape).astype(np.float32)
        photo = photo + noise * np.sqrt(
            look.noise_std**2 + look.shot_noise * np.clip(photo, 0, None)
        )
        imgs.append(np.clip(np.round(photo), 0, 255).astype(np.uint8))
        # silhouette in the photo: the pinhole mask sampled bilinearly at each photo pixel's
        # undistorted position, >= 0.5 (closer to true coverage than nearest-neighbour)
        cover = cv2.remap(
            mask[i].astype(np.float32),
            mx,
            my,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        masks.append((cover >= 0.5).astype(np.uint8))
        # vertex visibility from the z-buffer
        Rv, tv = pc.R_world2cam, pc.t_world2cam
        xc = vertices @ Rv.T + tv
        z = np.maximum(xc[:, 2], 1e-6)
        u = np.round(pc.K[0, 0] * xc[:, 0] / z + pc.K[0, 1] * xc[:, 1] / z + pc.K[0, 2]).astype(int)
        v = np.round(pc.K[1, 1] * xc[:, 1] / z + pc.K[1, 2]).astype(int)
        inside = (xc[:, 2] > 0) & (u >= pad) & (v >= pad) & (u < Wp - pad) & (v < Hp - pad)
        uu, vv = np.clip(u, 0, Wp - 1), np.clip(v, 0, Hp - 1)
        dz = depth[i][vv, uu]
        vis.append(inside & mask[i][vv, uu] & (xc[:, 2] < dz + 0.02))
    return np.stack(imgs), np.stack(masks), np.stack(vis)


# ==========================================================================================
# sessions and benchmarks
# ==========================================================================================
def _subject_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def _motion(cfg: SceneConfig, rng, model, betas):
    T = cfg.frames_per_subject
    if cfg.motion == "poses":
        pose = M.sample_poses(rng, T, cfg.pose_style)
        transl = np.zeros((T, 3))
        transl[:, [0, 2]] = rng.uniform(-1, 1, (T, 2)) * cfg.position_jitter_m
    else:
        pose, transl = M.motion_sequence(cfg.motion, T, cfg.fps, rng)
    transl = M.place_on_floor(model, pose, betas, transl)
    return pose, transl


def generate_session(
    path,
    cfg: SceneConfig = SceneConfig(),
    model=None,
    progress: bool = True,
    subject_index: int = 0,
    overwrite: bool = True,
) -> Path:
    """Write one synthetic capture session (one subject) to ``path`` (.h5).

    Contents: rig, frames (distorted photos, timestamps), the subject (betas + texture),
    ground truth (pose_rotvecs, betas, transl; extras joints (T,24,3), masks (T,V,H,W) uint8,
    visibility (T,V,N) bool), initial estimates from
    :func:`mvcap.motions.perturb_like_regressor`, and provenance (the config, seed, subject
    index and the sampled studio/looks). Deterministic in (cfg, subject_index)."""
    from .body import load_body_model
    from .capture import BodyParams, Session

    t0 = time.time()
    model = model or load_body_model()
    path = Path(path)
    i = int(subject_index)
    rng_subj = _subject_rng(cfg.seed, i, 0)
    rng_motion = _subject_rng(cfg.seed, i, 1)
    rng_rig = _subject_rng(cfg.seed, i if cfg.new_rig_per_subject else 0, 2)
    rng_img = _subject_rng(cfg.seed, i, 3)
    rng_init = _subject_rng(cfg.seed, i, 4)

    subject = make_subject(rng_subj, model, f"subject{i:02d}", cfg.subject)
    betas = subject.betas.astype(np.float64)
    pose, transl = _motion(cfg, rng_motion, model, betas)
    T = pose.shape[0]

    V = cfg.rig.total_cameras
    off = [
        float(rng_rig.uniform(0.5, 0.85))
        if rng_rig.random() < cfg.partial_out_of_view_prob
        else 0.0
        for _ in range(V)
    ]
    rig = make_ring_rig(cfg.rig, rng_rig, off_subject=off)
    pad = _distortion_pad(rig)
    studio = make_studio(_padded_rig(rig, pad), rng_img, cfg)
    looks = _sample_looks(rng_img, V, cfg)
    maps = [_distort_maps(c, pad) for c in rig]

    with torch.no_grad():
        out = model(
            torch.as_tensor(pose, dtype=torch.float32),
            torch.as_tensor(betas, dtype=torch.float32)[None].expand(T, -1),
            torch.as_tensor(transl, dtype=torch.float32),
        )
    verts = out.vertices.numpy().astype(np.float64)
    joints = out.joints.numpy().astype(np.float64)

    betas_T = np.tile(betas, (T, 1))
    if cfg.init == "perturb":
        init_R = rig[cfg.init_view].R_world2cam if 0 <= cfg.init_view < V else None
        init_pose, init_transl, init_betas = M.perturb_like_regressor(
            rng_init, pose, transl, betas_T, SMPL_PARENTS, cfg.perturb, init_R
        )
        ki = None
    else:  # "keypoints": detections with detector errors -> triangulation -> init fit
        from .synth_detect import keypoint_init

        ki = keypoint_init(model, rig, pose, betas, verts, joints, cfg.detector, cfg.init_fit, rng_init)
        init_pose, init_betas, init_transl = ki.pose_rotvecs, ki.betas, ki.transl

    W, H = cfg.rig.image_size
    prov = {
        "generator": "mvcap.synth.generate_session",
        "seed": int(cfg.seed),
        "subject_index": i,
        "config": _config_dict(cfg),
        "subject_meta": subject.meta,
        "world": "Y up, floor y=0, metres",
        "lights": {
            "key_dir": studio.key_dir.tolist(),
            "fill_dir": studio.fill_dir.tolist(),
            "ambient": studio.ambient,
            "key": studio.key,
            "fill": studio.fill,
        },
        "views": [
            {
                "gain": lk.gain.tolist(),
                "vignette": lk.vignette,
                "blur_sigma": lk.blur_sigma,
                "noise_std": lk.noise_std,
                "aim_offset": o,
            }
            for lk, o in zip(looks, off, strict=True)
        ],
        "body_model": str(getattr(model, "path", "")),
    }
    if ki is not None:
        prov["keypoint_init"] = ki.summary()
    masks = np.zeros((T, V, H, W), np.uint8)
    vis = np.zeros((T, V, verts.shape[1]), bool)
    with Session.create(path, rig, T, fps=cfg.fps, provenance=prov, overwrite=overwrite) as s:
        s.set_world_convention("+y")  # the synthetic studio: Y up, floor y = 0
        s.write_subject(subject)
        for t in range(T):
            imgs, m, vv = render_frame(
                model, rig, subject, verts[t], studio, pad, looks, rng_img, maps
            )
            s.write_frame(t, imgs, timestamp=t / cfg.fps)
            masks[t], vis[t] = m, vv
            if progress:
                print(f"\r{path.name}: frame {t + 1}/{T}", end="", flush=True)
        if ki is not None:  # the simulated detector's output, as `mvcap detect` would store it
            for t in range(T):
                s.write_detections(t, ki.detections.keypoints[t], masks[t] if cfg.detector.write_masks else None)
        s.write_init(init_pose, init_betas, init_transl)
        s.write_ground_truth(
            BodyParams(pose, betas_T, transl), joints=joints, masks=masks, visibility=vis
        )
        s.mark_complete()
    if progress:
        print(f"\r{path.name}: {T} frames x {V} views in {time.time() - t0:.1f} s")
    return path


def generate_benchmark(
    out_dir,
    cfg: SceneConfig = SceneConfig(),
    model=None,
    progress: bool = True,
    overwrite: bool = True,
) -> list[Path]:
    """One session per subject: ``out_dir/subjectNN.h5``. Same seed -> identical arrays."""
    from .body import load_body_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model or load_body_model()
    return [
        generate_session(out_dir / f"subject{i:02d}.h5", cfg, model, progress, i, overwrite)
        for i in range(cfg.num_subjects)
    ]


# ==========================================================================================
# contact sheet
# ==========================================================================================
def contact_sheet(
    session_path,
    frames: Sequence[int] | None = (0,),
    out_png=None,
    tile: int = 256,
    outline: bool = False,
) -> Path:
    """A grid PNG (rows: frames, columns: views) of a session, for judging realism.
    ``outline`` draws the ground-truth silhouette contour (green) when it is stored."""
    from .capture import Session

    session_path = Path(session_path)
    out_png = Path(out_png) if out_png else session_path.with_suffix(".png")
    rows = []
    with Session.open(session_path) as s:
        frames = (
            list(range(s.num_frames)) if frames is None else [f for f in frames if f < s.num_frames]
        )
        gt = s.read_ground_truth_extras() if (outline and s.has_ground_truth) else {}
        for t in frames:
            imgs = s.read_frame(t)
            tiles = []
            for v, img in enumerate(imgs):
                img = np.ascontiguousarray(img)
                if "masks" in gt:
                    cnts, _ = cv2.findContours(
                        gt["masks"][t, v].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
                    )
                    img = cv2.drawContours(img.copy(), cnts, -1, (0, 255, 0), 1)
                h, w = img.shape[:2]
                sc = tile / max(h, w)
                im = cv2.resize(img, (round(w * sc), round(h * sc)), interpolation=cv2.INTER_AREA)
                canvas = np.zeros((tile, tile, 3), np.uint8)
                canvas[: im.shape[0], : im.shape[1]] = im
                cv2.putText(
                    canvas,
                    f"{s.view_names[v]} t={t}",
                    (4, 14),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.4,
                    (255, 255, 0),
                    1,
                    cv2.LINE_AA,
                )
                tiles.append(canvas)
            rows.append(np.concatenate(tiles, 1))
    sheet = np.concatenate(rows, 0)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out_png
