"""Initial body estimates per frame: a body fit to triangulated 2D keypoints, or a user's npz.

From detections (``mvcap detect`` first): the stored MediaPipe keypoints are triangulated
robustly (:mod:`mvcap.triangulate`: outlier views dropped, left/right swaps undone), then
pose (24 rotation vectors), root translation and optionally the shape are fitted per frame to

    E = w_3d  * mean_k c_k rho(|kp_k(body) - X_k|, sigma_3d)                 (triangulated points)
      + w_2d  * mean_v mean_k c_vk rho(|pi_v(kp_k(body)) - y_vk| / s_v, sigma_2d)  (detections)
      + w_mask * mean_v mean_i D_v(pi_v(x_i)) / s_v                (body inside the person mask)
      + w_limits * limits(pose) + w_prior * prior(pose) + w_temporal * |pose - pose_prev|^2
      + w_betas * |betas|^2                                         (when the shape is fitted)

(rho: Geman-McClure in [0, 1); s_v: the person's size in view v; D_v: distance to the mask).
The first frame, and any frame whose warm start from the previous frame fits badly, is solved
from several starts: the global orientation comes from the torso's triangulated shoulders and
hips, turned about the body's up axis by ``360 / yaw_starts`` degree steps; the best fit wins.

Keypoints on the body (:func:`mediapipe_keypoint_definition`): how MediaPipe's landmarks are
computed from the posed SMPL-layout body, by fixed rules on the mesh, see that function.

From an npz (:func:`load_npz_init`): SMPL parameters in the rig's world frame.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import roma
import torch
from smplx.lbs import batch_rigid_transform
from torch import Tensor

from mvcap.body import BodyModel, BodyParams
from mvcap.cameras import Rig, cam_to_pixels, world_to_cam
from mvcap.config import ConfigError
from mvcap.cues import outside_distance, sample_outside
from mvcap.detect import KEYPOINT_FORMAT, MEDIAPIPE_POSE_33, DetectConfig
from mvcap.errors import MvcapError
from mvcap.fit import BodyFit, DataTerm, Regularisers, SolverConfig, geman_mcclure
from mvcap.keypoints import keypoint_set
from mvcap.rigrefine import rig_fit_warnings
from mvcap.threads import torch_threads
from mvcap.triangulate import TriangulateConfig, Triangulation, triangulate_keypoints

log = logging.getLogger(__name__)

__all__ = [
    "InitConfig",
    "InitError",
    "KeypointDefinition",
    "mediapipe_keypoint_definition",
    "KeypointBody",
    "KeypointFitResult",
    "fit_keypoints",
    "InitSummary",
    "initialize_session",
    "load_npz_init",
    "init_from_npz",
]


class InitError(MvcapError):
    """An initial estimate cannot be made from the given inputs; the message says how to fix it."""


@dataclass(frozen=True)
class InitConfig:
    """Keypoint initialisation (``configs/init.toml``): detection, triangulation and the fit."""

    betas: str = "subject"  # "subject": the session's registered shape (fit if none) | "fit" | "zero"
    iterations: int = 50  # L-BFGS iterations per stage of a fresh fit
    iterations_warm: int = 30  # ... of a fit warm-started from the previous frame
    yaw_starts: int = 4  # global-orientation starts for a fresh fit
    sigma_3d_m: float = 0.05  # Geman-McClure scale of the 3D term, metres
    sigma_2d: float = 0.05  # Geman-McClure scale of the 2D term, fraction of the person's size
    w_3d: float = 1.0
    w_2d: float = 0.2
    w_mask: float = 0.0  # person-mask term (needs stored masks); 0 = off
    w_limits: float = 1e-2
    w_prior: float = 2e-5
    w_temporal: float = 1e-3  # closeness to the previous frame's pose (radians^2)
    w_betas: float = 1e-3
    restart_error_m: float = 0.08  # a warm start leaving any keypoint this far off is redone fresh
    anneal: tuple[float, ...] = (8.0, 2.5, 1.0)  # robust scales (x sigma) of a fresh fit's stages
    anneal_warm: tuple[float, ...] = (1.0,)  # ... and of a warm-started fit
    full_starts: int = 2  # best root-only starts that go on to the full fit
    min_keypoints: int = 8  # fewer triangulated keypoints: the frame gets no estimate
    mask_vertices: int = 400  # vertices sampled for the mask term
    threads: int = 1  # torch threads (small tensors: one is as fast and never spin-waits)
    detect: DetectConfig = field(default_factory=DetectConfig)
    triangulate: TriangulateConfig = field(default_factory=TriangulateConfig)

    def __post_init__(self):
        if self.betas not in ("subject", "fit", "zero"):
            raise ConfigError(f"betas must be 'subject', 'fit' or 'zero', got {self.betas!r}")
        if self.yaw_starts < 1:
            raise ConfigError(f"yaw_starts must be >= 1, got {self.yaw_starts}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")


# ------------------------------------------------------------------------------------------
# keypoints on the body
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeypointDefinition:
    """Keypoints as fixed linear combinations of posed joints and posed vertices.

    kp_k = sum_j joint_weights[k, j] J_j + sum_m vertex_weights[k, m] v_{vertex_ids[m]}.
    names (K,); joint_weights (K, 24); vertex_ids (M,); vertex_weights (K, M); defined (K,)
    bool (undefined keypoints are all-zero rows and must be ignored); rules (K,) text.
    """

    names: tuple[str, ...]
    joint_weights: np.ndarray
    vertex_ids: np.ndarray
    vertex_weights: np.ndarray
    defined: np.ndarray
    rules: tuple[str, ...]

    def evaluate(self, joints: Tensor, vertices: Tensor) -> Tensor:
        """joints (B, 24, 3), vertices (B, N, 3) (the full mesh) -> keypoints (B, K, 3)."""
        jw = torch.as_tensor(self.joint_weights, dtype=joints.dtype, device=joints.device)
        vw = torch.as_tensor(self.vertex_weights, dtype=joints.dtype, device=joints.device)
        sel = vertices[:, torch.as_tensor(self.vertex_ids, device=vertices.device)]
        return torch.einsum("kj,bjc->bkc", jw, joints) + torch.einsum("km,bmc->bkc", vw, sel)


#: MediaPipe landmarks placed at the SMPL joint of the same name (its rotation centre).
_MP_AT_JOINT = {
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
    "left_wrist": 20, "right_wrist": 21, "left_knee": 4, "right_knee": 5,
    "left_ankle": 7, "right_ankle": 8,
}  # fmt: skip
#: MediaPipe landmarks placed at the body model's extra vertices (chosen by the body builder as
#: the vertex nearest to Anny's COCO keypoint of that name, see mvcap/tools/build_body.py).
_MP_AT_VERTEX = {
    "nose": "nose", "left_eye": "leye", "right_eye": "reye", "left_ear": "lear",
    "right_ear": "rear", "left_heel": "LHeel", "right_heel": "RHeel",
    "left_foot_index": "LBigToe", "right_foot_index": "RBigToe",
}  # fmt: skip
_HIP_SLAB_M = 0.015  # half-height of the horizontal slab whose skin defines the hip landmark


def mediapipe_keypoint_definition(model: BodyModel) -> KeypointDefinition:
    """MediaPipe Pose's 33 landmarks on an SMPL-layout body (21 defined, by fixed rules).

    * shoulders, elbows, wrists, knees, ankles: the SMPL joint (Anny's own COCO keypoint
      regressors, restricted to our mesh, place these 0.2-3.5 cm from the SMPL joints);
    * nose, eyes, ears, heels, foot index (toe tip): the model's extra vertices (``nose``,
      ``leye``, ``reye``, ``lear``, ``rear``, ``LHeel``, ``RHeel``, ``LBigToe``, ``RBigToe``);
    * hips: MediaPipe's (like COCO's) hip is not SMPL's hip joint (the femoral head, deep and
      back in the pelvis) but the middle of the body's cross-section at hip height. Rule: the
      mean of the rest-pose (mean-shape) skin vertices on that side of the midline within
      +-1.5 cm of the hip joint's height, skinned like any vertex. On the embedded model this
      point sits ~2.3 cm in front of the SMPL hip joint (Anny's COCO hip: 2.1 cm in front,
      1.8 cm lower, 1.1 cm more medial).
    * eye corners, mouth, fingers: undefined (``defined`` False), not used by the fit.
    """
    names = MEDIAPIPE_POSE_33
    K = len(names)
    jw = np.zeros((K, 24))
    rules = ["undefined"] * K
    vid: list[int] = []
    vrows: list[tuple[int, int, float]] = []  # (keypoint, column, weight)

    def add_vertices(k, ids, weights):
        for i, w in zip(ids, weights, strict=True):
            if int(i) not in vid:
                vid.append(int(i))
            vrows.append((k, vid.index(int(i)), float(w)))

    for name, j in _MP_AT_JOINT.items():
        k = names.index(name)
        jw[k, j] = 1.0
        rules[k] = f"joint {model.joint_names[j]}"
    extra = model.extra_vertex_ids
    for name, key in _MP_AT_VERTEX.items():
        if key in extra:
            k = names.index(name)
            add_vertices(k, [extra[key]], [1.0])
            rules[k] = f"vertex {extra[key]} ({key})"
    with torch.no_grad():
        tpl = model.template_vertices()[0].double().numpy()
        J = model.rest_joints()[0].double().numpy()
    for name, j in (("left_hip", 1), ("right_hip", 2)):
        side = np.sign(J[j, 0] - J[0, 0])
        sel = np.flatnonzero((np.abs(tpl[:, 1] - J[j, 1]) < _HIP_SLAB_M) & (np.sign(tpl[:, 0] - J[0, 0]) == side))
        if sel.size < 3:  # an unusual mesh: fall back to the joint
            jw[names.index(name), j] = 1.0
            rules[names.index(name)] = f"joint {model.joint_names[j]} (fallback)"
            continue
        add_vertices(names.index(name), sel, np.full(sel.size, 1.0 / sel.size))
        rules[names.index(name)] = f"mean of {sel.size} skin vertices at hip-joint height (+-1.5 cm), this side"
    vw = np.zeros((K, len(vid)))
    for k, m, w in vrows:
        vw[k, m] += w
    defined = (jw.sum(1) + vw.sum(1)) > 0
    return KeypointDefinition(names, jw, np.array(vid, np.int64), vw, defined, tuple(rules))


class KeypointPosed(NamedTuple):
    """keypoints (B, K, 3), joints (B, 24, 3), vertices (B, E, 3): the extra vertices asked for."""

    keypoints: Tensor
    joints: Tensor
    vertices: Tensor


class KeypointBody:
    """Posed keypoints (and a few vertices) without skinning the whole mesh.

    Same result as ``definition.evaluate(model(...).joints, model(...).vertices)`` but skins
    only the vertices the keypoints (and the optional ``extra_vertices``) need.
    """

    def __init__(self, model: BodyModel, definition: KeypointDefinition, extra_vertices=None):
        self.definition = definition
        self.parents = model.parents
        f64 = torch.float64
        ids = np.asarray(definition.vertex_ids, np.int64)
        self.num_kp_vertices = ids.size
        self.num_extra_vertices = 0 if extra_vertices is None else len(extra_vertices)
        if extra_vertices is not None:
            ids = np.concatenate([ids, np.asarray(extra_vertices, np.int64)])
        idx = torch.as_tensor(ids)
        self.v_tpl = model.v_template.to(f64)[idx]  # (M, 3)
        self.v_dirs = model.shapedirs.to(f64)[idx]  # (M, 3, nb)
        self.weights = model.weights.to(f64)[idx]  # (M, 24)
        self.posedirs = model.posedirs.to(f64)[idx] if model.has_posedirs else None  # (M, 3, 207)
        Jr = model.J_regressor.to(f64)
        self.J_tpl = Jr @ model.v_template.to(f64)  # (24, 3)
        self.J_dirs = torch.einsum("jn,nck->jck", Jr, model.shapedirs.to(f64))  # (24, 3, nb)
        self.jw = torch.as_tensor(definition.joint_weights, dtype=f64)
        self.vw = torch.as_tensor(definition.vertex_weights, dtype=f64)
        self.num_betas = model.num_betas

    def __call__(self, rotmats: Tensor, betas: Tensor, transl: Tensor) -> KeypointPosed:
        """rotmats (B, 24, 3, 3), betas (B, k), transl (B, 3) -> keypoints (B, K, 3), joints
        (B, 24, 3), extra vertices (B, E, 3)."""
        dt = rotmats.dtype
        B, k = rotmats.shape[0], betas.shape[1]
        betas = betas.expand(B, -1)
        J_rest = self.J_tpl.to(dt) + torch.einsum("jck,bk->bjc", self.J_dirs[..., :k].to(dt), betas)
        v = self.v_tpl.to(dt) + torch.einsum("mck,bk->bmc", self.v_dirs[..., :k].to(dt), betas)
        if self.posedirs is not None:
            feat = (rotmats[:, 1:] - torch.eye(3, dtype=dt)).reshape(B, -1)
            v = v + torch.einsum("mcp,bp->bmc", self.posedirs.to(dt), feat)
        joints, rel = batch_rigid_transform(rotmats, J_rest, self.parents, dtype=dt)
        blend = torch.einsum("mj,bjik->bmik", self.weights.to(dt), rel[:, :, :3, :])
        verts = (blend[..., :3] * v[:, :, None, :]).sum(-1) + blend[..., 3]
        joints = joints + transl[:, None]
        verts = verts + transl[:, None]
        n = self.num_kp_vertices
        kp = torch.einsum("kj,bjc->bkc", self.jw.to(dt), joints) + torch.einsum(
            "km,bmc->bkc", self.vw.to(dt), verts[:, :n]
        )
        return KeypointPosed(kp, joints, verts[:, n:])


# ------------------------------------------------------------------------------------------
# the fit
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeypointFitResult:
    """Per-frame fit results (numpy float64): pose_rotvecs (T, 24, 3), betas (T, nb),
    transl (T, 3); fitted (T,) bool (False: too few keypoints, values NaN); keypoint_error_m
    (T,) median distance of the body's keypoints to the triangulated ones; reprojection_px (T,)
    mean distance of the projected keypoints to the inlier detections; restarts (T,) bool
    (fresh multi-start fits); seconds (T,)."""

    pose_rotvecs: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    fitted: np.ndarray
    keypoint_error_m: np.ndarray
    reprojection_px: np.ndarray
    restarts: np.ndarray
    seconds: np.ndarray


def _rot_about(axis: np.ndarray, angle: float) -> np.ndarray:
    from mvcap.cameras import rotvec_to_rotmat_np

    return rotvec_to_rotmat_np(axis / np.linalg.norm(axis) * angle)


def _torso_orientation(points: np.ndarray, names=MEDIAPIPE_POSE_33) -> np.ndarray | None:
    """World rotation of the body's rest frame (X left, Y up, Z forward) from the shoulders and
    hips (K, 3); None when they are not all triangulated."""
    ids = [names.index(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]
    ls, rs, lh, rh = points[ids]
    if not np.isfinite(points[ids]).all():
        return None
    x = (ls - rs) + (lh - rh)
    y = (ls + rs) / 2 - (lh + rh) / 2
    if np.linalg.norm(x) < 1e-6 or np.linalg.norm(y) < 1e-6:
        return None
    y = y / np.linalg.norm(y)
    x = x - (x @ y) * y
    if np.linalg.norm(x) < 1e-6:
        return None
    x = x / np.linalg.norm(x)
    return np.stack([x, y, np.cross(x, y)], 1)


class _Problem:
    """One frame's data and its data terms (for B candidate bodies of that frame)."""

    def __init__(self, kb: KeypointBody, rig: Rig, cfg: InitConfig, mask_dt=None):
        self.kb, self.cfg = kb, cfg
        cams = rig.tensors(dtype=torch.float64)
        self.R, self.t, self.K, self.dist = cams["R_world2cam"], cams["t_world2cam"], cams["K"], cams["dist"]
        self.defined = torch.as_tensor(kb.definition.defined)
        self.reg = Regularisers(
            w_limits=cfg.w_limits, w_prior=cfg.w_prior, w_temporal=cfg.w_temporal, w_betas=cfg.w_betas
        )
        self.mask_dt = mask_dt  # (V, 1, H, W) distance outside the mask, or None
        self.sigma_scale = 1.0  # graduated robustness: large scales first, so far points still pull
        names = kb.definition.names
        self.torso = torch.as_tensor([("shoulder" in n or "hip" in n or n == "nose" or "ear" in n) for n in names])
        self.torso_only = False

    def set_frame(self, X: np.ndarray, c3: np.ndarray, kp2d: np.ndarray, w2d: np.ndarray):
        """X (K, 3) triangulated (NaN = none); c3 (K,) weights; kp2d (V, K, 2); w2d (V, K)."""
        ok3 = np.isfinite(X).all(-1) & self.defined.numpy()
        self.X = torch.as_tensor(np.nan_to_num(X))
        self.w3_all = torch.as_tensor(np.where(ok3, c3, 0.0))
        ok2 = np.isfinite(kp2d).all(-1) & self.defined.numpy()[None]
        self.y2 = torch.as_tensor(np.nan_to_num(kp2d))
        self.w2_all = torch.as_tensor(np.where(ok2, w2d, 0.0))
        pts = np.where(ok2[..., None], kp2d, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # views without detections
            diag = np.linalg.norm(np.nanmax(pts, 1) - np.nanmin(pts, 1), axis=-1)
        self.scale = torch.as_tensor(np.where(np.isfinite(diag) & (diag > 1), diag, 1.0))  # (V,)

    @property
    def w3(self) -> Tensor:
        return self.w3_all * self.torso if self.torso_only else self.w3_all

    @property
    def w2(self) -> Tensor:
        return self.w2_all * self.torso if self.torso_only else self.w2_all

    def project(self, pts: Tensor) -> Tensor:  # (B, P, 3) -> (B, V, P, 2)
        return cam_to_pixels(world_to_cam(pts, self.R, self.t), self.K, self.dist)

    def data_terms(self) -> list[DataTerm]:
        """The fit's data terms at the current robust scale and keypoint selection: the 3D
        keypoints, the 2D detections and (when set) the person masks; each posed -> (B,)."""
        cfg, s = self.cfg, self.sigma_scale
        w3, w2 = self.w3, self.w2

        def keypoints_3d(posed: KeypointPosed) -> Tensor:
            d2 = ((posed.keypoints - self.X) ** 2).sum(-1)
            return cfg.w_3d * (w3 * geman_mcclure(d2, cfg.sigma_3d_m * s)).sum(-1) / w3.sum().clamp_min(1e-9)

        def keypoints_2d(posed: KeypointPosed) -> Tensor:
            uv = self.project(posed.keypoints)  # (B, V, K, 2)
            sq = ((uv - self.y2) ** 2).sum(-1) / self.scale[:, None] ** 2
            per_view = (w2 * geman_mcclure(sq, cfg.sigma_2d * s)).sum(-1) / w2.sum(-1).clamp_min(1e-9)
            has = (w2.sum(-1) > 0).to(per_view.dtype)
            return cfg.w_2d * (per_view * has).sum(-1) / has.sum().clamp_min(1)

        def mask(posed: KeypointPosed) -> Tensor:
            return cfg.w_mask * self._mask_term(posed.vertices)

        terms = [keypoints_3d]
        if cfg.w_2d > 0 and w2.sum() > 0:
            terms.append(keypoints_2d)
        if cfg.w_mask > 0 and self.mask_dt is not None and self.kb.num_extra_vertices > 0:
            terms.append(mask)
        return terms

    def _mask_term(self, verts: Tensor) -> Tensor:
        d = sample_outside(self.mask_dt, self.project(verts))  # (B, V, E)
        return (d / self.scale[:, None]).mean((-1, -2))


def _solve(problem: _Problem, R_base, betas0, transl0, cfg, stage, prev_pose=None, fit_betas=False, iterations=None):
    """One run of the fitting kit from (R_base (B,24,3,3), betas0 (B,nb), transl0 (B,3)); stage
    'global' fits the root rotation and translation only, 'full' everything. prev_pose
    (B, 24, 3): the previous frame's pose for the temporal term. Returns rotmats, betas,
    transl, loss (B,)."""
    fit = BodyFit(
        problem.kb,
        R_base,
        betas0,
        transl0,
        problem.reg,
        free_joints=24 if stage == "full" else 1,
        optimize_betas=fit_betas,
        betas_ref=torch.zeros_like(betas0),  # the shape prior: |betas|^2
        prev_pose_rotvecs=prev_pose,
    )
    terms = problem.data_terms()
    fit.solve(
        terms, SolverConfig(iterations or cfg.iterations, history=20, tolerance_grad=1e-8, tolerance_change=1e-10)
    )
    with torch.no_grad():
        return fit.rotmats(), fit.betas(), fit.transl(), fit.losses(terms)


def _fresh_starts(problem: _Problem, X: np.ndarray, betas: Tensor, cfg: InitConfig) -> tuple[Tensor, Tensor]:
    """Candidate (rotmats (B,24,3,3), transl (B,3)): torso orientation turned about the body's
    up axis in ``yaw_starts`` steps, rest-pose body, keypoint centroids aligned."""
    R_torso = _torso_orientation(X, problem.kb.definition.names)
    if R_torso is None:
        R_torso = np.eye(3)
    up = R_torso[:, 1]
    n = cfg.yaw_starts
    Rs = np.stack([_rot_about(up, 2 * math.pi * i / n) @ R_torso for i in range(n)])
    rot = torch.eye(3, dtype=torch.float64).repeat(n, 24, 1, 1)
    rot[:, 0] = torch.as_tensor(Rs)
    with torch.no_grad():
        kp, _, _ = problem.kb(rot, betas.expand(n, -1), torch.zeros(n, 3, dtype=torch.float64))
    w = problem.w3[None, :, None]
    centroid_model = (kp * w).sum(1) / w.sum(1).clamp_min(1e-9)
    centroid_data = (problem.X * problem.w3[:, None]).sum(0) / problem.w3.sum().clamp_min(1e-9)
    return rot, centroid_data[None] - centroid_model


def _worst_error(problem: _Problem, kp: Tensor) -> float:
    """Largest 3D keypoint error (m) of one body (1, K, 3): a limb left behind by a warm start
    shows here while the median stays small (the points are already robustly triangulated)."""
    ok = problem.w3 > 0
    if not ok.any():
        return float("inf")
    return float((kp[0] - problem.X).norm(dim=-1)[ok].max())


def _evaluate(problem: _Problem, kp: Tensor) -> tuple[float, float]:
    """Median 3D keypoint error (m) and mean 2D reprojection error (px) of one body (1, K, 3)."""
    ok = problem.w3 > 0
    err3 = float((kp[0] - problem.X).norm(dim=-1)[ok].median()) if ok.any() else float("nan")
    uv = problem.project(kp)[0]
    d = (uv - problem.y2).norm(dim=-1)
    w = problem.w2 > 0
    err2 = float(d[w].mean()) if w.any() else float("nan")
    return err3, err2


def fit_keypoints(
    model: BodyModel,
    rig: Rig,
    tri: Triangulation,
    cfg: InitConfig = InitConfig(),
    betas=None,
    definition: KeypointDefinition | None = None,
    masks=None,
    init=None,
    progress: bool = False,
    on_frame=None,
) -> KeypointFitResult:
    """Fit the body to triangulated keypoints, frame by frame (warm-started from the previous).

    tri: a :class:`Triangulation` of T frames (its ``keypoints`` are the swap-corrected 2D
    detections); betas: (nb,) known shape, or None to fit it on the first frame (then held);
    masks: optional callable ``t -> (V, H, W) float mask (a list of V masks for views of
    different sizes) or None`` for the mask term;
    init: optional ``(pose_rotvecs (24,3), betas (nb,), transl (3,))`` warm start for frame 0;
    on_frame: optional callback ``(t, pose (24,3), betas, transl)`` after each fitted frame.
    """
    from tqdm import tqdm

    with torch_threads(cfg.threads):
        definition = definition or mediapipe_keypoint_definition(model)
        K = len(definition.names)
        if tri.points_world.shape[1] != K:
            raise InitError(
                f"the triangulated keypoints have K={tri.points_world.shape[1]} points but the keypoint "
                f"definition has {K} ({KEYPOINT_FORMAT}); detect with MediaPipe Pose"
            )
        extra = None
        if cfg.w_mask > 0 and masks is not None:
            extra = np.linspace(0, model.num_vertices - 1, cfg.mask_vertices).round().astype(np.int64)
        kb = KeypointBody(model, definition, extra)
        T = tri.points_world.shape[0]
        nb = model.num_betas
        out_pose = np.full((T, 24, 3), np.nan)
        out_betas = np.full((T, nb), np.nan)
        out_tr = np.full((T, 3), np.nan)
        fitted = np.zeros(T, bool)
        err3 = np.full(T, np.nan)
        err2 = np.full(T, np.nan)
        restarts = np.zeros(T, bool)
        secs = np.full(T, np.nan)
        fit_betas = betas is None
        b_cur = torch.zeros(1, nb, dtype=torch.float64) if betas is None else _as_betas(betas, nb)
        prev = None
        if init is not None:
            p0, b0, t0 = init
            prev = (roma.rotvec_to_rotmat(torch.as_tensor(np.asarray(p0, np.float64)))[None], _as_betas(b0, nb),
                    torch.as_tensor(np.asarray(t0, np.float64))[None])  # fmt: skip
            if betas is None:
                b_cur, fit_betas = prev[1], False
        inlier_w = np.where(tri.inliers, tri.keypoints[..., 2], 0.0)  # (T, V, K)
        for t in tqdm(range(T), desc="init", unit="frame", disable=not progress):
            t0 = time.perf_counter()
            n_ok = int((np.isfinite(tri.points_world[t]).all(-1) & definition.defined).sum())
            if n_ok < cfg.min_keypoints:
                prev = None  # the next fitted frame starts fresh
                continue
            mask_dt = None
            if extra is not None:
                m = masks(t)
                mask_dt = None if m is None else outside_distance(m)
            problem = _Problem(kb, rig, cfg, mask_dt)
            problem.set_frame(tri.points_world[t], tri.confidence[t], tri.keypoints[t, :, :, :2], inlier_w[t])
            best = None
            if prev is not None:
                prev_pose = roma.rotmat_to_rotvec(prev[0])
                R, b, tr, loss = _annealed(
                    problem, prev[0], b_cur, prev[2], cfg, cfg.anneal_warm, prev_pose, iterations=cfg.iterations_warm
                )
                kp = kb(R, b, tr)[0]
                best = (R, b, tr, loss, kp)
                if _worst_error(problem, kp) > cfg.restart_error_m:
                    best_loss = loss
                    fresh = _fresh_fit(problem, b_cur, cfg, fit_betas)
                    restarts[t] = True
                    if fresh[3] < best_loss:
                        best = fresh
            else:
                best = _fresh_fit(problem, b_cur, cfg, fit_betas)
                restarts[t] = True
            R, b, tr, loss, kp = best
            if fit_betas:  # the shape is fitted once, on the first frame, then held
                b_cur, fit_betas = b.detach()[:1], False
            prev = (R.detach(), b_cur, tr.detach())
            pose = roma.rotmat_to_rotvec(R)[0].numpy()
            out_pose[t], out_betas[t], out_tr[t] = pose, b[0].numpy(), tr[0].numpy()
            err3[t], err2[t] = _evaluate(problem, kp)
            fitted[t] = True
            secs[t] = time.perf_counter() - t0
            if on_frame is not None:
                on_frame(t, out_pose[t], out_betas[t], out_tr[t])
        return KeypointFitResult(out_pose, out_betas, out_tr, fitted, err3, err2, restarts, secs)


def _fresh_fit(problem: _Problem, betas: Tensor, cfg: InitConfig, fit_betas: bool):
    """Multi-start fit: the root alone (torso and head keypoints) from every start, then the
    best ``full_starts`` of them go on to the full body; the lowest final loss wins."""
    rot, tr = _fresh_starts(problem, problem.X.numpy(), betas, cfg)
    n = rot.shape[0]
    b = betas.expand(n, -1).clone()
    problem.torso_only, problem.sigma_scale = True, cfg.anneal[0]
    try:
        R, _, tr, loss = _solve(problem, rot, b, tr, cfg, "global")
    finally:
        problem.torso_only = False
    keep = torch.argsort(loss)[: max(1, cfg.full_starts)]
    R, b, tr = R[keep], b[keep], tr[keep]
    R, b, tr, loss = _annealed(problem, R, b, tr, cfg, cfg.anneal, fit_betas=fit_betas)
    i = int(torch.argmin(loss))
    R, b, tr, loss = R[i : i + 1], b[i : i + 1], tr[i : i + 1], loss[i : i + 1]
    with torch.no_grad():
        kp = problem.kb(R, b, tr)[0]
    return R, b, tr, loss, kp


def _annealed(problem: _Problem, R, b, tr, cfg: InitConfig, scales, prev_pose=None, fit_betas=False, iterations=None):
    """Full fits at decreasing robust scales; the returned loss is at the last scale."""
    loss = None
    for sc in scales:
        problem.sigma_scale = sc
        R, b, tr, loss = _solve(problem, R, b, tr, cfg, "full", prev_pose, fit_betas, iterations)
    problem.sigma_scale = 1.0
    return R, b, tr, loss


def _as_betas(betas, nb: int) -> Tensor:
    b = torch.as_tensor(np.asarray(betas, np.float64)).reshape(1, -1)
    if b.shape[1] > nb:
        raise InitError(f"betas have {b.shape[1]} values but the body model has {nb} shape components")
    return torch.nn.functional.pad(b, (0, nb - b.shape[1]))


# ------------------------------------------------------------------------------------------
# sessions
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitSummary:
    """What an initialisation run did: frames (F,) considered now; fitted (F,) bool;
    skipped: frames that already had an estimate; swaps: left/right swaps undone;
    keypoint_error_m / reprojection_px (F,) per frame (NaN if not fitted); seconds (F,)."""

    frames: np.ndarray
    fitted: np.ndarray
    skipped: int
    swaps: int
    keypoint_error_m: np.ndarray
    reprojection_px: np.ndarray
    seconds: np.ndarray
    rig_warnings: tuple[str, ...] = ()  # cameras the rig does not fit (:func:`mvcap.rigrefine.rig_fit_warnings`)

    def __str__(self) -> str:
        ok = self.fitted
        err = 1000 * float(np.nanmedian(self.keypoint_error_m[ok])) if ok.any() else float("nan")
        secs = float(np.nanmean(self.seconds[ok])) if ok.any() else 0.0
        return (
            f"fitted {int(ok.sum())}/{len(ok)} frames ({self.skipped} already had one), {self.swaps} left/right "
            f"swaps undone, median keypoint error {err:.0f} mm, {secs:.2f} s/frame"
        )


def initialize_session(
    path: str | Path,
    cfg: InitConfig = InitConfig(),
    frames=None,
    overwrite: bool = False,
    progress: bool = True,
    model: BodyModel | None = None,
    views: list[str] | tuple[str, ...] | None = None,
) -> InitSummary:
    """Fit initial body estimates to a session's stored detections and write them (resumable).

    Frames that already have an estimate are skipped unless ``overwrite`` (a synthetic session
    comes with regressor-like estimates for every frame: pass ``overwrite=True`` to replace
    them). Each fitted frame is written at once, so an interrupted run resumes where it stopped.
    views: fit with these cameras' detections only (default all; e.g. to leave one out).
    """
    from mvcap.body import load_body_model
    from mvcap.capture import Session

    model = model or load_body_model()
    with Session.open(path, mode="a") as s:
        if not s.has_detections:
            raise InitError(
                f"{path} has no 2D detections; run `mvcap detect {path}` first (needs the 'detect' "
                "extra), or give an estimate yourself with `mvcap init SESSION --from-npz FILE`"
            )
        try:  # the landmark set the stored detections use (mvcap.keypoints)
            kset = keypoint_set(s.keypoint_format)
        except ValueError as exc:
            raise InitError(f"{path}: its detections cannot be used: {exc}") from exc
        detected = s.detections_written
        todo = np.flatnonzero(detected) if frames is None else np.unique(np.asarray(list(frames), np.int64))
        not_det = todo[~detected[todo]] if todo.size else todo
        if not_det.size:
            raise InitError(f"frames {not_det[:10].tolist()} of {path} have no detections; run `mvcap detect` on them")
        have = s.init_valid
        skipped = 0 if overwrite else int(have[todo].sum())
        if not overwrite:
            todo = todo[~have[todo]]
        if todo.size == 0:
            return InitSummary(todo, np.zeros(0, bool), skipped, 0, *(np.zeros(0) for _ in range(3)))
        rig = s.rig
        idx = list(range(len(rig)))
        if views:
            unknown = [v for v in views if v not in rig.names]
            if unknown or len(set(views)) < 2:
                raise InitError(
                    f"views: give at least 2 of this session's cameras {list(rig.names)}; got {list(views)}"
                )
            idx = [rig.index(v) for v in views]
            rig = rig.subset(list(views))
        kp = s.read_keypoints(todo)[:, idx]
        tri = triangulate_keypoints(rig, kp, cfg.triangulate, flip_index=kset.flip_index, names=kset.names)
        # does the rig fit the detections? (on at most ~50 of the frames: a camera-wide check)
        rig_warnings = tuple(rig_fit_warnings(rig, kp[:: max(1, len(kp) // 50)], kset.flip_index))
        for w in rig_warnings:
            log.warning(w)
        betas = None
        if cfg.betas == "zero":
            betas = np.zeros(model.num_betas)
        elif cfg.betas == "subject" and s.subject_betas is not None:
            betas = np.asarray(s.subject_betas, np.float64)
        masks = (lambda i: _view_masks(s.read_masks(int(todo[i])), idx)) if cfg.w_mask > 0 else None
        # a resumed run is warm-started from the estimate of the frame before it
        t_first = int(todo[0])
        init = None
        if t_first > 0 and not overwrite and have[t_first - 1]:
            p = s.read_init([t_first - 1])
            init = (p.pose_rotvecs[0], p.betas[0], p.transl[0])

        def write(i, pose, b, tr):
            s.write_init(pose[None], _pad_betas(b)[None], tr[None], frames=[int(todo[i])])

        res = fit_keypoints(model, rig, tri, cfg, betas, definition=kset.definition(model), masks=masks, init=init,
                            progress=progress, on_frame=write)  # fmt: skip
    return InitSummary(todo, res.fitted, skipped, int(tri.swapped.sum()), res.keypoint_error_m, res.reprojection_px,
                       res.seconds, rig_warnings)  # fmt: skip


def _view_masks(masks, idx: list[int]):
    if masks is None or isinstance(masks, np.ndarray):
        return None if masks is None else masks[idx]
    return [masks[i] for i in idx]  # views of different sizes: a list (see Session.read_masks)


def _pad_betas(b: np.ndarray, n: int = 10) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1)[:n]
    return np.pad(b, (0, n - b.size))


# ------------------------------------------------------------------------------------------
# user-supplied estimates
# ------------------------------------------------------------------------------------------
def load_npz_init(path: str | Path, num_frames: int | None = None, default_betas=None) -> BodyParams:
    """Read SMPL parameters from an npz into a :class:`mvcap.body.BodyParams`.

    Keys: ``poses`` (T, 72) or ``pose_rotvecs`` (T, 24, 3) axis-angle (joint 0 = global
    orientation); ``trans`` or ``transl`` (T, 3) metres; ``betas`` (n,) or (T, n), n <= 10
    (zero-padded; optional when ``default_betas`` is given). All in the rig's world frame.
    ``num_frames``: the session's frame count, which T must equal.
    """
    path = Path(path)
    if not path.is_file():
        raise InitError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise InitError(f"cannot read {path} as an npz file ({type(exc).__name__}: {exc})") from exc
    keys = sorted(data)
    hint = "expected poses (T,72) or pose_rotvecs (T,24,3), trans or transl (T,3), betas (10,) or (T,10)"

    def real(key: str, value) -> np.ndarray:
        """float64 from a real-valued array; text, objects and complex numbers are refused
        (a complex array cast to float would silently drop its imaginary part)."""
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            kinds = {"U": "text", "S": "bytes", "O": "objects", "c": "complex numbers", "V": "records"}
            raise InitError(
                f"{path}: '{key}' holds {kinds.get(value.dtype.kind, value.dtype.name)} (dtype {value.dtype}); "
                "SMPL parameters must be real numbers (float arrays)"
            )
        return value.astype(np.float64)

    if "pose_rotvecs" in data:
        pose = real("pose_rotvecs", data["pose_rotvecs"])
        if pose.ndim != 3 or pose.shape[1:] != (24, 3):
            raise InitError(f"{path}: 'pose_rotvecs' must have shape (T, 24, 3), got {pose.shape}")
    elif "poses" in data:
        pose = real("poses", data["poses"])
        if pose.ndim != 2 or pose.shape[1] != 72:
            extra = (
                " (SMPL-H/SMPL-X poses hold hand joints: keep the first 66 values and append 6 zeros)"
                if pose.ndim == 2 and pose.shape[1] > 72
                else ""
            )
            raise InitError(f"{path}: 'poses' must have shape (T, 72) (24 joints x 3), got {pose.shape}{extra}")
        pose = pose.reshape(-1, 24, 3)
    else:
        raise InitError(f"{path}: no pose; {hint}. Keys found: {keys}")
    T = pose.shape[0]
    if T == 0:
        raise InitError(f"{path}: the pose has 0 frames; give one row per session frame")
    tkey = "transl" if "transl" in data else "trans" if "trans" in data else None
    if tkey is None:
        raise InitError(f"{path}: no root translation ('trans' or 'transl'); {hint}. Keys found: {keys}")
    transl = real(tkey, data[tkey])
    if transl.shape != (T, 3):
        raise InitError(f"{path}: '{tkey}' must have shape (T={T}, 3) like the pose, got {transl.shape}")
    if "betas" in data:
        betas = real("betas", data["betas"])
    elif default_betas is not None:
        betas = real("betas (the session's subject)", default_betas)
    else:
        raise InitError(f"{path}: no 'betas' and the session has no subject shape to use instead; {hint}")
    if betas.ndim == 1:
        betas = np.broadcast_to(betas, (T, betas.shape[0]))
    if betas.ndim != 2 or betas.shape[0] != T:
        raise InitError(f"{path}: 'betas' must have shape (n,) or (T={T}, n), got {betas.shape}")
    if betas.shape[1] > 10:
        raise InitError(
            f"{path}: 'betas' has {betas.shape[1]} shape components; mvcap's body uses 10 "
            "(pass betas[..., :10] if the rest are for another model)"
        )
    betas = np.pad(betas, ((0, 0), (0, 10 - betas.shape[1])))
    for name, arr in (("pose", pose), (tkey, transl), ("betas", betas)):
        # BodyParams stores float32: a value beyond its range would become infinite there
        if not np.isfinite(arr).all() or np.abs(arr).max() > np.finfo(np.float32).max:
            raise InitError(f"{path}: '{name}' contains NaN, infinite or out-of-range values")
    if num_frames is not None and T != num_frames:
        raise InitError(f"{path}: {T} frames of parameters but the session has {num_frames}; give one row per frame")
    if np.abs(transl).max() > 100:
        raise InitError(f"{path}: translations up to {np.abs(transl).max():.0f} — they must be metres, not mm")
    return BodyParams(pose, betas, transl)


def init_from_npz(session_path: str | Path, npz_path: str | Path, overwrite: bool = False) -> int:
    """Write a user's SMPL parameters (see :func:`load_npz_init`) as the session's initial
    estimates. Refuses to replace existing estimates unless ``overwrite``. Returns T."""
    from mvcap.capture import Session

    with Session.open(session_path, mode="a") as s:
        subj = s.subject
        params = load_npz_init(npz_path, s.num_frames, None if subj is None else subj.betas)
        if s.init_valid.any() and not overwrite:
            raise InitError(
                f"{session_path} already has initial estimates for {int(s.init_valid.sum())} frames; "
                "pass overwrite=True (CLI: --overwrite) to replace them"
            )
        s.write_init(params, None, None)
    return len(params)
