"""Robust multi-view triangulation of 2D keypoints (pure numpy, batched).

Pipeline for keypoints ``(T, V, K, 3)`` ``[x_px, y_px, confidence]`` in the distorted images:

1. Undistort (:func:`mvcap.cameras.undistort_points`) and move to normalised camera
   coordinates, where the projection of a world point is ``[R | t] X`` (better conditioned
   than pixels).
2. Per keypoint, a RANSAC over view pairs: every pair of confident views proposes a point
   (DLT), scored MSAC-style over all views by the reprojection error relative to a per-view
   threshold (``outlier_frac`` of the person's size in that view, at least ``outlier_min_px``).
   The best hypothesis' inliers are re-triangulated (confidence-weighted DLT, rows normalised)
   and polished with a few Gauss-Newton steps on the confidence-weighted pixel error.
3. Left/right swaps (MediaPipe swaps sides in views that see the person from behind): for
   every view, the view's keypoints are compared with a robust triangulation from the *other*
   views, as detected and with all left/right pairs exchanged. The view whose exchange lowers
   its truncated reprojection cost the most (below ``swap_ratio`` of the original and by at
   least ``swap_min_gain``) is swapped, and the test repeats until no view gains. Then the
   final triangulation runs on the corrected keypoints. (Exchanging the arms or the legs alone
   was tried: in side views, where left and right nearly coincide, noise passed that test.)
4. Mirrored frames: when most views swapped, step 3 makes the few right ones agree with
   them, and every view's left is the person's right. The views then agree, but the skeleton
   is a mirror image: its nose lies behind the face and its toes behind the heels, with
   "forward" taken from the torso's left and up directions. Such a frame has the left/right
   landmarks of every view exchanged (:func:`mirrored_frames`).

Shapes: T frames, V views, K keypoints. Pixel errors are measured in the undistorted pinhole
image (the same pixels up to the lens distortion's local scale).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from mvcap.cameras import Rig, project, undistort_points
from mvcap.config import ConfigError
from mvcap.errors import MvcapError

__all__ = [
    "TriangulateConfig",
    "Triangulation",
    "TriangulateError",
    "normalized_points",
    "dlt",
    "triangulate_robust",
    "triangulate_keypoints",
    "reprojection_errors",
    "mirrored_frames",
    "match_swaps",
]


class TriangulateError(MvcapError):
    """Inputs to the triangulation are malformed; the message says which and how."""


@dataclass(frozen=True)
class TriangulateConfig:
    """Robust triangulation settings (TOML table ``[triangulate]`` of ``configs/init.toml``)."""

    min_confidence: float = 0.3  # detections below are ignored
    outlier_frac: float = 0.06  # inlier threshold: fraction of the person's size in the view
    outlier_min_px: float = 3.0  # ... but never below this many pixels
    min_views: int = 2  # fewer inlier views: the keypoint is not triangulated (NaN)
    refine_steps: int = 3  # Gauss-Newton steps on the pixel error after the DLT (0 = DLT only)
    fix_swaps: bool = True  # detect and undo left/right swaps per view and frame
    swap_ratio: float = 0.5  # swap when the swapped cost is below this fraction of the original
    swap_min_gain: float = 1.5  # ... and lower by at least this (1 = one keypoint at the threshold)
    fix_mirror: bool = True  # exchange left/right in every view of a frame whose skeleton is a mirror image
    chunk_frames: int = 64  # frames per batch (memory)

    def __post_init__(self):
        if self.min_views < 2:
            raise ConfigError(f"min_views must be >= 2 (a point needs two rays), got {self.min_views}")
        if not 0 < self.swap_ratio <= 1:
            raise ConfigError(f"swap_ratio must be in (0, 1], got {self.swap_ratio}")
        if self.outlier_frac <= 0 and self.outlier_min_px <= 0:
            raise ConfigError("outlier_frac or outlier_min_px must be positive")


@dataclass(frozen=True)
class Triangulation:
    """Result of :func:`triangulate_keypoints`.

    points_world: (T, K, 3) metres, NaN where fewer than ``min_views`` views agree;
    confidence: (T, K) mean detection confidence over the inlier views (0 where none);
    num_inliers: (T, K) int, views that agree; inliers: (T, V, K) bool;
    reprojection_px: (T, K) mean distance of the inlier detections to the reprojected point,
    in the distorted images (NaN where not triangulated);
    swapped: (T, V) bool, views whose left/right landmarks were exchanged;
    keypoints: (T, V, K, 3) the input detections with those swaps applied.
    """

    points_world: np.ndarray
    confidence: np.ndarray
    num_inliers: np.ndarray
    inliers: np.ndarray
    reprojection_px: np.ndarray
    swapped: np.ndarray
    keypoints: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """(T, K) bool: triangulated keypoints."""
        return np.isfinite(self.points_world).all(-1)


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------
def normalized_points(rig: Rig, uv_pixels: np.ndarray) -> np.ndarray:
    """Distorted pixels (..., V, N, 2) -> normalised camera coordinates (..., V, N, 2) (x/z, y/z)."""
    uv = undistort_points(rig, torch.as_tensor(np.asarray(uv_pixels, np.float64))).numpy()
    K = np.stack([c.K for c in rig])  # (V, 3, 3)
    x = (uv[..., 0] - K[:, None, 0, 2]) / K[:, None, 0, 0]
    y = (uv[..., 1] - K[:, None, 1, 2]) / K[:, None, 1, 1]
    return np.stack([x, y], -1)


def _extrinsics(rig: Rig) -> np.ndarray:
    """(V, 3, 4) ``[R | t]``: projection matrices in normalised camera coordinates."""
    return np.stack([np.concatenate([c.R_world2cam, c.t_world2cam[:, None]], 1) for c in rig])


def dlt(Rt: np.ndarray, xy: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted linear triangulation.

    Rt (V, 3, 4) projection matrices (normalised coordinates); xy (..., V, 2) normalised
    points; weight (..., V) >= 0 (0 = unused). Each view's two rows are normalised to unit
    length before weighting, so the weights compare like geometric errors. Returns (..., 3);
    NaN where fewer than two views have weight.
    """
    xy = np.nan_to_num(xy)
    rows_x = xy[..., 0:1] * Rt[:, 2] - Rt[:, 0]  # (..., V, 4)
    rows_y = xy[..., 1:2] * Rt[:, 2] - Rt[:, 1]
    A = np.stack([rows_x, rows_y], -2)  # (..., V, 2, 4)
    A = A / np.maximum(np.linalg.norm(A, axis=-1, keepdims=True), 1e-12)
    A = A * weight[..., None, None]
    A = A.reshape(*A.shape[:-3], -1, 4)
    M = np.einsum("...ri,...rj->...ij", A, A)
    _, vecs = np.linalg.eigh(M)
    X = vecs[..., :, 0]  # eigenvector of the smallest eigenvalue
    with np.errstate(divide="ignore", invalid="ignore"):
        X = X[..., :3] / X[..., 3:4]
    X[(weight > 0).sum(-1) < 2] = np.nan
    return X


def _project_norm(Rt: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., 3) -> normalised coordinates in every view (..., V, 2) and depths (..., V)."""
    c = np.einsum("vij,...j->...vi", Rt[:, :, :3], X) + Rt[:, :, 3]
    z = c[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = c[..., :2] / z[..., None]
    return xy, z


def _errors_px(Rt, f, X, xy):
    """Reprojection error in (pinhole) pixels (..., V); inf behind a camera or for NaN points."""
    proj, z = _project_norm(Rt, X)
    e = np.linalg.norm((proj - xy) * f[:, None], axis=-1)
    return np.where((z > 1e-6) & np.isfinite(e), e, np.inf)


def _gauss_newton(Rt, f, X, xy, w, steps: int):
    """Polish points X (..., 3) by minimising sum_v w_v |f_v (pi_v(X) - xy_v)|^2."""
    R, t = Rt[:, :, :3], Rt[:, :, 3]
    for _ in range(steps):
        c = np.einsum("vij,...j->...vi", R, X) + t  # (..., V, 3)
        z = np.where(np.abs(c[..., 2]) > 1e-9, c[..., 2], 1e-9)
        r = (c[..., :2] / z[..., None] - np.nan_to_num(xy)) * f[:, None]  # (..., V, 2)
        # d pi / d c = [[1/z, 0, -x/z^2], [0, 1/z, -y/z^2]]; d c / d X = R
        dp = np.zeros((*c.shape[:-1], 2, 3))
        dp[..., 0, 0] = 1 / z
        dp[..., 1, 1] = 1 / z
        dp[..., 0, 2] = -c[..., 0] / z**2
        dp[..., 1, 2] = -c[..., 1] / z**2
        Jm = np.einsum("...vab,vbc->...vac", dp, R) * f[:, None, None]  # (..., V, 2, 3)
        ww = np.where(np.isfinite(r).all(-1), w, 0.0)[..., None, None]
        Jm = np.nan_to_num(Jm)
        r = np.nan_to_num(r)
        H = np.einsum("...vai,...vaj->...ij", Jm * ww, Jm)
        g = np.einsum("...vai,...va->...i", Jm * ww, r)
        H = H + np.eye(3) * 1e-9 * np.trace(H, axis1=-2, axis2=-1)[..., None, None]
        ok = np.isfinite(X).all(-1) & (np.abs(np.linalg.det(H)) > 1e-30)
        step = np.zeros_like(X)
        step[ok] = np.linalg.solve(H[ok], g[ok][..., None])[..., 0]
        X = X - step
    return X


def triangulate_robust(
    Rt: np.ndarray,
    f: np.ndarray,
    xy: np.ndarray,
    conf: np.ndarray,
    threshold_px: np.ndarray,
    min_views: int = 2,
    refine_steps: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC-over-view-pairs triangulation of M points.

    Rt (V, 3, 4); f (V,) focal lengths (pixels); xy (M, V, 2) normalised coordinates;
    conf (M, V) weights (0 = no detection); threshold_px (M, V) inlier thresholds.
    Returns (X (M, 3) NaN where fewer than ``min_views`` inliers, inliers (M, V) bool).
    """
    M, V = conf.shape
    X_out = np.full((M, 3), np.nan)
    inl_out = np.zeros((M, V), bool)
    valid = (conf > 0) & np.isfinite(xy).all(-1)
    if V < 2 or M == 0:
        return X_out, inl_out
    pairs = np.array(list(itertools.combinations(range(V), 2)))  # (P, 2)
    P = len(pairs)
    sel = np.zeros((P, V))
    sel[np.arange(P), pairs[:, 0]] = 1
    sel[np.arange(P), pairs[:, 1]] = 1
    w_h = conf[:, None, :] * sel[None]  # (M, P, V)
    X_h = dlt(Rt, np.broadcast_to(xy[:, None], (M, P, V, 2)), w_h)  # (M, P, 3)
    e = _errors_px(Rt, f, X_h, xy[:, None])  # (M, P, V)
    thr = threshold_px[:, None, :]
    cost = np.where(valid[:, None], np.minimum((e / thr) ** 2, 1.0), 0.0).sum(-1)
    pair_ok = valid[:, pairs[:, 0]] & valid[:, pairs[:, 1]] & np.isfinite(X_h).all(-1)
    cost = np.where(pair_ok, cost, np.inf)
    best = np.argmin(cost, axis=1)
    has = np.isfinite(cost[np.arange(M), best])
    inl = valid & (e[np.arange(M), best] < threshold_px) & has[:, None]
    X = np.full((M, 3), np.nan)
    for _ in range(2):  # re-triangulate from the inliers, then re-select them once
        X = dlt(Rt, xy, conf * inl)
        if refine_steps > 0:
            X = _gauss_newton(Rt, f, X, xy, conf * inl, refine_steps)
        inl = valid & (_errors_px(Rt, f, X, xy) < threshold_px) & has[:, None]
    ok = inl.sum(-1) >= min_views
    X_out[ok] = X[ok]
    inl_out[ok] = inl[ok]
    return X_out, inl_out


def reprojection_errors(rig: Rig, points_world: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Distance (pixels, distorted images) between detections and reprojected points.

    points_world (T, K, 3); keypoints (T, V, K, 2 or 3) -> (T, V, K), NaN where either is."""
    X = torch.as_tensor(np.nan_to_num(np.asarray(points_world, np.float64)))
    uv = project(rig, X).numpy()  # (T, V, K, 2)
    e = np.linalg.norm(uv - keypoints[..., :2], axis=-1)
    bad = ~np.isfinite(points_world).all(-1)[:, None, :] | ~np.isfinite(keypoints[..., :2]).all(-1)
    return np.where(bad, np.nan, e)


# ------------------------------------------------------------------------------------------
# keypoints of a session
# ------------------------------------------------------------------------------------------
def _person_threshold(uv: np.ndarray, valid: np.ndarray, cfg: TriangulateConfig) -> np.ndarray:
    """Per (frame, view) inlier threshold in pixels from the person's bounding-box diagonal."""
    big = np.where(valid[..., None], uv, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no detections in a view
        lo, hi = np.nanmin(big, axis=-2), np.nanmax(big, axis=-2)  # (T, V, 2)
    diag = np.nan_to_num(np.linalg.norm(hi - lo, axis=-1))
    return np.maximum(cfg.outlier_frac * diag, cfg.outlier_min_px)  # (T, V)


def _robust_frames(Rt, f, xy, conf, thr, cfg, view_mask=None):
    """Triangulate (T, K) points from (T, V, K) detections; view_mask (V,) bool limits views."""
    T, V, K = conf.shape
    c = conf if view_mask is None else conf * view_mask[None, :, None]
    xy_m = np.moveaxis(xy, 2, 1).reshape(T * K, V, 2)
    c_m = np.moveaxis(c, 2, 1).reshape(T * K, V)
    thr_m = np.broadcast_to(thr[:, None, :], (T, K, V))
    X, inl = triangulate_robust(
        Rt, f, xy_m, c_m, thr_m.reshape(T * K, V), min_views=cfg.min_views, refine_steps=cfg.refine_steps
    )
    return X.reshape(T, K, 3), np.moveaxis(inl.reshape(T, K, V), 2, 1)


def _swap_costs(Rt, f, X_ref, xy_v, valid_v, thr_v, paired):
    """Truncated reprojection cost of one view's keypoints (T, K) against reference points (T, K, 3)."""
    proj, z = _project_norm(Rt[None], X_ref)  # (T, K, 1, 2), (T, K, 1)
    e = np.linalg.norm((proj[..., 0, :] - xy_v) * f, axis=-1)
    e = np.where((z[..., 0] > 0) & np.isfinite(e), e, np.inf)
    use = valid_v & paired[None] & np.isfinite(X_ref).all(-1)
    return np.where(use, np.minimum((e / thr_v[:, None]) ** 2, 1.0), 0.0).sum(-1)


def _swap_gain(Rt_v, f_v, X_ref, xy_v, valid_v, thr_v, paired, flip_index, cfg) -> np.ndarray:
    """(T,) how much exchanging left and right lowers one view's cost against X_ref (T, K, 3),
    where the rule allows it (below ``swap_ratio`` of the cost as detected, lower by at least
    ``swap_min_gain``); -inf elsewhere."""
    c0 = _swap_costs(Rt_v, f_v, X_ref, xy_v, valid_v, thr_v, paired)
    c1 = _swap_costs(Rt_v, f_v, X_ref, xy_v[:, flip_index], valid_v[:, flip_index], thr_v, paired)
    return np.where((c1 < cfg.swap_ratio * c0) & (c0 - c1 >= cfg.swap_min_gain), c0 - c1, -np.inf)


#: what says which way a skeleton faces: (a landmark in front, what it is in front of, how far
#: behind (metres) it must be to vote "mirrored": a turned head or a foot turned out stays above)
_FACING = (("nose", ("left_ear", "right_ear"), 0.01), ("left_foot_index", ("left_heel",), 0.025),
           ("right_foot_index", ("right_heel",), 0.025), ("left_big_toe", ("left_heel",), 0.025),
           ("right_big_toe", ("right_heel",), 0.025))  # fmt: skip


def mirrored_frames(points_world: np.ndarray, names) -> np.ndarray:
    """(T,) bool: frames whose skeleton (T, K, 3) is a mirror image, its left/right labels
    exchanged: with forward = left x up from the shoulders and hips (left = left minus right
    landmarks, up = the shoulders' midpoint minus the hips'), the nose lies behind the ears'
    midpoint and the toes behind the heels, each by more than a margin. A frame needs every
    vote it has against it and at least one vote; frames without a torso are never mirrored.
    names: the K landmark names (:mod:`mvcap.keypoints`)."""
    X = np.asarray(points_world, np.float64)
    at = {n: i for i, n in enumerate(names)}

    def pt(n):
        return X[:, at[n]] if n in at else np.full(X.shape[::2], np.nan)

    with warnings.catch_warnings():  # a frame without shoulders or hips: NaN, no vote
        warnings.simplefilter("ignore", RuntimeWarning)
        left = np.nanmean([pt("left_shoulder") - pt("right_shoulder"), pt("left_hip") - pt("right_hip")], 0)
    up = (pt("left_shoulder") + pt("right_shoulder")) / 2 - (pt("left_hip") + pt("right_hip")) / 2
    forward = np.cross(left, up)
    with np.errstate(invalid="ignore", divide="ignore"):
        forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    against = np.zeros(len(X), np.int64)
    votes = np.zeros(len(X), np.int64)
    for front, behind, margin in _FACING:
        if front not in at or not all(b in at for b in behind):
            continue
        d = np.einsum("tc,tc->t", pt(front) - np.mean([pt(b) for b in behind], 0), forward)
        ok = np.isfinite(d)
        votes += ok
        against += ok & (d < -margin)
    return (votes > 0) & (against == votes)


def _landmark_set(K: int, flip_index, names) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """The left/right exchange and the names of K landmarks, checked; MediaPipe Pose's where
    K = 33 and they are not given (None otherwise)."""
    if K == 33 and (flip_index is None or names is None):
        from mvcap.detect import FLIP_INDEX, MEDIAPIPE_POSE_33

        flip_index = FLIP_INDEX if flip_index is None else flip_index
        names = MEDIAPIPE_POSE_33 if names is None else names
    if names is not None and len(names) != K:
        raise TriangulateError(f"names must name the K={K} keypoints, got {len(names)}")
    if flip_index is not None:
        flip_index = np.asarray(flip_index, np.int64)
        if flip_index.shape != (K,) or np.any(flip_index[flip_index] != np.arange(K)):
            raise TriangulateError(f"flip_index must be a (K={K},) involution, got {flip_index}")
    return flip_index, None if names is None else tuple(names)


def match_swaps(
    camera: Rig,
    keypoints: np.ndarray,
    points_world: np.ndarray,
    cfg: TriangulateConfig = TriangulateConfig(),
    flip_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One camera's detections (T, K, 3) against 3D keypoints (T, K, 3) triangulated without
    it: (T,) bool, the frames in which its left and right are exchanged by step 3's rule, and
    the detections (T, K, 3, a copy) with those frames exchanged back. For measuring a camera
    the fit did not see with its detections corrected as the fitted cameras' were.
    flip_index: default MediaPipe Pose's for K = 33; none: nothing is exchanged."""
    kp = np.array(keypoints, np.float64)
    if len(camera) != 1 or kp.ndim != 3 or kp.shape[-1] != 3:
        raise TriangulateError(
            f"match_swaps takes one camera and its (T, K, 3) keypoints, got {len(camera)} and {kp.shape}"
        )
    T, K, _ = kp.shape
    flip_index, _ = _landmark_set(K, flip_index, None)
    if flip_index is None or not cfg.fix_swaps:
        return np.zeros(T, bool), kp
    valid = (kp[..., 2] >= cfg.min_confidence) & np.isfinite(kp[..., :2]).all(-1)
    xy = np.where(valid[..., None], normalized_points(camera, np.nan_to_num(kp[..., :2])[:, None])[:, 0], np.nan)
    thr = _person_threshold(kp[:, None, :, :2], valid[:, None], cfg)[:, 0]
    Rt, f = _extrinsics(camera)[0], np.sqrt(camera[0].K[0, 0] * camera[0].K[1, 1])
    paired = flip_index != np.arange(K)
    X = np.asarray(points_world, np.float64)
    swapped = np.isfinite(_swap_gain(Rt, f, X, xy, valid, thr, paired, flip_index, cfg))
    kp[swapped] = kp[swapped][:, flip_index]
    return swapped, kp


def triangulate_keypoints(
    rig: Rig,
    keypoints: np.ndarray,
    cfg: TriangulateConfig = TriangulateConfig(),
    flip_index: np.ndarray | None = None,
    names=None,
) -> Triangulation:
    """Robustly triangulate per-view 2D keypoints.

    keypoints: (T, V, K, 3) ``[x_px, y_px, confidence]`` in the rig's distorted images (as
    stored by ``Session.write_detections``); flip_index (K,): the keypoint each one becomes
    under a left/right exchange (default: MediaPipe Pose's for K = 33; None and K != 33
    disables swap handling); names (K,): the landmark names, for the mirror test (default:
    MediaPipe Pose's for K = 33; None and K != 33 disables it). Returns a :class:`Triangulation`.
    """
    kp = np.asarray(keypoints, np.float64)
    V = len(rig)
    if kp.ndim == 3:
        raise TriangulateError(f"keypoints must be (T, V, K, 3); add a frame axis (kp[None]) to {kp.shape}")
    if kp.ndim != 4 or kp.shape[1] != V or kp.shape[3] != 3:
        raise TriangulateError(f"keypoints must have shape (T, V={V}, K, 3) [x_px, y_px, confidence], got {kp.shape}")
    T, _, K, _ = kp.shape
    flip_index, names = _landmark_set(K, flip_index, names)
    Rt = _extrinsics(rig)
    f = np.array([np.sqrt(c.K[0, 0] * c.K[1, 1]) for c in rig])

    out = {k: [] for k in ("X", "inl", "swapped", "kp")}
    step = max(int(cfg.chunk_frames), 1)
    for s in range(0, T, step):
        chunk = kp[s : s + step].copy()
        X, inl, swapped = _triangulate_chunk(rig, Rt, f, chunk, cfg, flip_index)
        if cfg.fix_mirror and flip_index is not None and names is not None:
            # every view exchanged: each point is the one its mirror landmark had (no new solve)
            m = mirrored_frames(X, names)
            X[m], inl[m], chunk[m] = X[m][:, flip_index], inl[m][:, :, flip_index], chunk[m][:, :, flip_index]
            swapped[m] = ~swapped[m]
        out["X"].append(X)
        out["inl"].append(inl)
        out["swapped"].append(swapped)
        out["kp"].append(chunk)
    X = np.concatenate(out["X"]) if T else np.zeros((0, K, 3))
    inl = np.concatenate(out["inl"]) if T else np.zeros((0, V, K), bool)
    swapped = np.concatenate(out["swapped"]) if T else np.zeros((0, V), bool)
    kp_fixed = np.concatenate(out["kp"]) if T else kp
    n_in = inl.sum(1)
    conf = np.where(inl, kp_fixed[..., 2], 0.0).sum(1) / np.maximum(n_in, 1)
    err = reprojection_errors(rig, X, kp_fixed)
    with np.errstate(invalid="ignore"):
        rep = np.where(inl, err, 0.0).sum(1) / n_in
    rep = np.where(n_in > 0, rep, np.nan)
    return Triangulation(X, conf, n_in, inl, rep, swapped, kp_fixed)


def _triangulate_chunk(rig, Rt, f, kp, cfg, flip_index):
    """Triangulate a chunk of frames in place of ``kp`` (swaps are applied to ``kp``)."""
    T, V, K, _ = kp.shape
    swapped = np.zeros((T, V), bool)

    def prepare():
        valid = (kp[..., 2] >= cfg.min_confidence) & np.isfinite(kp[..., :2]).all(-1)
        conf = np.where(valid, kp[..., 2], 0.0)
        xy = normalized_points(rig, np.nan_to_num(kp[..., :2]))
        xy = np.where(valid[..., None], xy, np.nan)
        thr = _person_threshold(kp[..., :2], valid, cfg)
        return valid, conf, xy, thr

    if cfg.fix_swaps and flip_index is not None and V >= 3:
        paired = flip_index != np.arange(K)
        active = np.ones(T, bool)
        for _ in range(V):
            if not active.any():
                break
            valid, conf, xy, thr = prepare()
            cand = np.full((T, V), -np.inf)
            idx = np.flatnonzero(active)
            for v in range(V):
                others = np.arange(V) != v
                X_ref, _ = _robust_frames(Rt, f, xy[idx], conf[idx], thr[idx], cfg, others)
                cand[idx, v] = _swap_gain(Rt[v], f[v], X_ref, xy[idx, v], valid[idx, v], thr[idx, v], paired,
                                          flip_index, cfg)  # fmt: skip
            best = np.argmax(cand, axis=1)
            do = np.isfinite(cand[np.arange(T), best]) & active
            for t in np.flatnonzero(do):
                v = best[t]
                kp[t, v] = kp[t, v][flip_index]
                swapped[t, v] = ~swapped[t, v]
            active = do

    valid, conf, xy, thr = prepare()
    X, inl = _robust_frames(Rt, f, xy, conf, thr, cfg)
    return X, inl, swapped
