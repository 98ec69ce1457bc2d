"""A simulated 2D keypoint detector for synthetic sessions, and the keypoint initial estimate.

The studio regime (``configs/bench/studio.toml``, ``SceneConfig.init = "keypoints"``) starts
from mvcap's own keypoint path instead of a perturbed ground truth:

1. the ground-truth body's MediaPipe Pose landmarks (:func:`mvcap.initialize.mediapipe_keypoint_definition`
   on our mesh) are moved by a **systematic per-subject, per-landmark offset** (a detector's
   landmark is not our definition of it: a few cm, fixed in the frame of the body part, mirrored
   between left and right, plus a fixed extra offset of the hips), then projected into every
   view's distorted image;
2. per view and frame the detector's errors are added: **Gaussian pixel noise** (std drawn per
   view from ``noise_px``, stated for 1080-pixel images and scaled with the image's shorter
   side), **dropout** (confidence 0, rate drawn per view from ``dropout``) and occasional
   **left/right swaps** of the whole person (:data:`mvcap.detect.FLIP_INDEX`); landmarks
   outside the image or behind the camera get confidence 0, and so do the landmarks our mesh
   does not define (eye corners, mouth, fingers);
3. exactly as ``mvcap init`` does on real detections: robust triangulation
   (:func:`mvcap.triangulate.triangulate_keypoints`) and the init fit
   (:func:`mvcap.initialize.fit_keypoints`).

The detections are stored in the session (``Session.write_detections``) so that the same
session serves ``mvcap init``, ``mvcap validate`` and the ``sparse-detector-keypoints`` bench row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .body import BodyModel
from .cameras import Rig, project, world_to_cam
from .detect import FLIP_INDEX, KEYPOINT_FORMAT
from .initialize import InitConfig, InitError, KeypointDefinition, fit_keypoints, mediapipe_keypoint_definition
from .poses import SMPL_PARENTS
from .triangulate import triangulate_keypoints

__all__ = ["DetectorSimConfig", "SimulatedDetections", "KeypointInit", "simulate_detections", "keypoint_init"]


@dataclass(frozen=True)
class DetectorSimConfig:
    """Errors of the simulated detector (TOML table ``[detector]`` of a scene config).

    noise_px: (lo, hi) std of the Gaussian pixel noise, drawn per view, in pixels of an image
      whose shorter side is ``reference_px`` (scaled linearly to the actual image).
    dropout: (lo, hi) fraction of landmarks missed (confidence 0), drawn per view.
    swap_prob: chance per view and frame that left and right are exchanged.
    bias_m: std (metres) of the fixed per-subject, per-landmark 3D offset, in the frame of the
      body part that carries the landmark (mirrored between left and right landmarks).
    hip_offset_m: a further fixed offset of both hip landmarks in the pelvis frame (x to the
      body's side, outwards; y up; z forward): detectors' hips are not our hip definition.
    confidence: (lo, hi) range of the confidence of a detected landmark.
    write_masks: also store the ground-truth silhouettes as the detector's person masks.
    """

    noise_px: tuple[float, float] = (5.0, 10.0)
    reference_px: float = 1080.0
    dropout: tuple[float, float] = (0.1, 0.2)
    swap_prob: float = 0.05
    bias_m: float = 0.02
    hip_offset_m: tuple[float, float, float] = (0.02, -0.02, 0.0)
    confidence: tuple[float, float] = (0.5, 1.0)
    write_masks: bool = True

    def __post_init__(self):
        if not (0 <= self.dropout[0] <= self.dropout[1] < 1):
            raise ValueError(f"dropout must be a range within [0, 1), got {self.dropout}")
        if not 0 <= self.swap_prob <= 1:
            raise ValueError(f"swap_prob must be in [0, 1], got {self.swap_prob}")
        if min(self.noise_px) < 0 or self.bias_m < 0 or self.reference_px <= 0:
            raise ValueError("noise_px and bias_m must be >= 0 and reference_px > 0")
        if not (0 < self.confidence[0] <= self.confidence[1] <= 1):
            raise ValueError(f"confidence must be a range within (0, 1], got {self.confidence}")


@dataclass(frozen=True)
class SimulatedDetections:
    """keypoints: (T, V, K, 3) float32 ``[x_px, y_px, confidence]`` in the distorted images
    (NaN xy and confidence 0 where missed); clean_uv: (T, V, K, 2) the biased landmarks
    projected without noise (before swaps); swapped: (T, V) bool; dropped: (T, V, K) bool (by
    dropout, among defined landmarks); noise_px: (V,) noise std used per view; dropout: (V,)
    rate per view; offsets_m: (K, 3) the per-landmark offsets in their body part's frame;
    defined: (K,) bool, the landmarks our mesh defines (the others are never found)."""

    keypoints: np.ndarray
    clean_uv: np.ndarray
    swapped: np.ndarray
    dropped: np.ndarray
    noise_px: np.ndarray
    dropout: np.ndarray
    offsets_m: np.ndarray
    defined: np.ndarray


def _global_rotations(pose_rotvecs: np.ndarray) -> np.ndarray:
    """(T, 24, 3) local rotvecs -> (T, 24, 3, 3) world rotations of every body part."""
    import roma

    R = roma.rotvec_to_rotmat(torch.as_tensor(pose_rotvecs, dtype=torch.float64)).numpy()
    G = np.empty_like(R)
    for j, p in enumerate(SMPL_PARENTS):
        G[:, j] = R[:, j] if p < 0 else G[:, p] @ R[:, j]
    return G


def _anchor_joints(model: BodyModel, definition: KeypointDefinition) -> np.ndarray:
    """(K,) the body part (joint) each landmark moves with: its joint, or the part that
    dominates the skinning of its vertices."""
    vw = model.weights.detach().double().numpy()[definition.vertex_ids]  # (M, 24)
    part = definition.joint_weights + definition.vertex_weights @ vw
    return part.argmax(1)


def _landmark_offsets(rng: np.random.Generator, cfg: DetectorSimConfig, names) -> np.ndarray:
    """(K, 3) offsets in the body-part frame: random, mirrored between left and right (the
    body's x axis is its left-right axis), plus the hips' fixed offset."""
    K = len(names)
    off = rng.normal(0.0, cfg.bias_m, (K, 3))
    for k in range(K):
        m = int(FLIP_INDEX[k])
        if m > k:  # k is a left landmark (MediaPipe lists left first), m its right twin
            off[m] = off[k] * np.array([-1.0, 1.0, 1.0])
        elif m == k:
            off[k, 0] = 0.0  # midline landmarks stay on the midline
    hip = np.asarray(cfg.hip_offset_m, np.float64)
    for name in ("left_hip", "right_hip"):
        k = names.index(name)
        side = 1.0 if name.startswith("left") else -1.0  # the body's left is +x
        off[k] += hip * np.array([side, 1.0, 1.0])
    return off


def simulate_detections(
    model: BodyModel,
    rig: Rig,
    pose_rotvecs: np.ndarray,
    vertices: np.ndarray,
    joints: np.ndarray,
    cfg: DetectorSimConfig,
    rng: np.random.Generator,
    definition: KeypointDefinition | None = None,
) -> SimulatedDetections:
    """MediaPipe-format detections of the ground-truth body with detector errors (see module).

    pose_rotvecs (T, 24, 3), vertices (T, N, 3), joints (T, 24, 3): the ground truth, world frame.
    """
    definition = definition or mediapipe_keypoint_definition(model)
    names = definition.names
    T, V, K = pose_rotvecs.shape[0], len(rig), len(names)
    kp3 = definition.evaluate(torch.as_tensor(joints), torch.as_tensor(vertices)).numpy()  # (T, K, 3)
    offsets = _landmark_offsets(rng, cfg, names)
    G = _global_rotations(pose_rotvecs)[:, _anchor_joints(model, definition)]  # (T, K, 3, 3)
    kp3 = kp3 + np.einsum("tkij,kj->tki", G, offsets)
    pts = torch.as_tensor(kp3, dtype=torch.float64)
    uv = project(rig, pts).numpy()  # (T, V, K, 2)
    T_rig = rig.tensors(dtype=torch.float64)
    z = world_to_cam(pts, T_rig["R_world2cam"], T_rig["t_world2cam"])[..., 2].numpy()  # (T, V, K)

    sizes = np.array([c.image_size for c in rig], np.float64)  # (V, 2) (W, H)
    scale = sizes.min(1) / cfg.reference_px
    noise = np.array([rng.uniform(*cfg.noise_px) for _ in range(V)]) * scale
    rates = np.array([rng.uniform(*cfg.dropout) for _ in range(V)])
    noisy = uv + rng.standard_normal(uv.shape) * noise[None, :, None, None]
    dropped = (rng.random((T, V, K)) < rates[None, :, None]) & definition.defined
    conf = rng.uniform(*cfg.confidence, (T, V, K))
    W, H = sizes[:, 0][None, :, None], sizes[:, 1][None, :, None]
    inside = (noisy[..., 0] >= 0) & (noisy[..., 0] < W) & (noisy[..., 1] >= 0) & (noisy[..., 1] < H) & (z > 0.05)
    ok = definition.defined & inside & ~dropped
    kp = np.concatenate([noisy, conf[..., None]], -1)
    kp[~ok] = (np.nan, np.nan, 0.0)
    swapped = rng.random((T, V)) < cfg.swap_prob
    kp[swapped] = kp[swapped][:, FLIP_INDEX]  # the detector labels left as right and vice versa
    return SimulatedDetections(kp.astype(np.float32), uv, swapped, dropped, noise, rates, offsets, definition.defined)


@dataclass(frozen=True)
class KeypointInit:
    """Initial estimates from simulated detections: pose_rotvecs (T, 24, 3), betas (T, 10),
    transl (T, 3); fitted (T,) bool (frames not fitted hold the nearest fitted frame's
    estimate); detections; swaps_undone (T, V) bool (the triangulation's swap decisions);
    keypoint_error_m (T,)."""

    pose_rotvecs: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    fitted: np.ndarray
    detections: SimulatedDetections
    swaps_undone: np.ndarray
    keypoint_error_m: np.ndarray

    def summary(self) -> dict:
        """Realised detector error rates and fit statistics (for the session's provenance)."""
        d = self.detections
        return {
            "keypoint_format": KEYPOINT_FORMAT,
            "noise_px": d.noise_px.tolist(),
            "dropout_rate": d.dropout.tolist(),
            "dropped_frac": float(d.dropped[..., d.defined].mean()),  # of the defined landmarks
            "swapped_frac": float(d.swapped.mean()),
            "swaps_undone_frac": float(self.swaps_undone.mean()),
            "swaps_caught": int((self.swaps_undone & d.swapped).sum()),
            "swaps": int(d.swapped.sum()),
            "offsets_m": np.round(d.offsets_m, 4).tolist(),
            "fitted_frames": int(self.fitted.sum()),
            "median_keypoint_error_m": float(np.nanmedian(self.keypoint_error_m)) if self.fitted.any() else None,
        }


def _fill_unfitted(x: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """Frames that were not fitted take the nearest fitted frame's values."""
    idx = np.flatnonzero(fitted)
    nearest = idx[np.abs(np.arange(len(fitted))[:, None] - idx[None]).argmin(1)]
    return x[nearest]


def keypoint_init(
    model: BodyModel,
    rig: Rig,
    pose_rotvecs: np.ndarray,
    betas: np.ndarray,
    vertices: np.ndarray,
    joints: np.ndarray,
    cfg: DetectorSimConfig,
    init_cfg: InitConfig,
    rng: np.random.Generator,
) -> KeypointInit:
    """Simulated detections -> robust triangulation -> init fit, as ``mvcap init`` does.

    betas (nb,): the subject's shape, used when ``init_cfg.betas`` is "subject" (a synthetic
    session's subject is registered: its shape is known), zeros for "zero", fitted for "fit".
    """
    definition = mediapipe_keypoint_definition(model)
    det = simulate_detections(model, rig, pose_rotvecs, vertices, joints, cfg, rng, definition)
    tri = triangulate_keypoints(rig, det.keypoints, init_cfg.triangulate)
    known = {"subject": np.asarray(betas, np.float64), "zero": np.zeros(model.num_betas), "fit": None}
    res = fit_keypoints(model, rig, tri, init_cfg, known[init_cfg.betas], definition=definition)
    if not res.fitted.any():
        raise InitError(
            "the simulated detections left no frame with enough triangulated keypoints; "
            "lower [detector] dropout / noise_px or add cameras"
        )
    b = np.zeros((len(res.betas), 10))
    n = min(10, res.betas.shape[1])
    b[:, :n] = res.betas[:, :n]
    fill = lambda x: _fill_unfitted(x, res.fitted)  # noqa: E731
    return KeypointInit(
        fill(res.pose_rotvecs), fill(b), fill(res.transl), res.fitted, det, tri.swapped, res.keypoint_error_m
    )
