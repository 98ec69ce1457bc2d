"""Rig refinement from the people in a take: correct camera poses that no longer fit.

A studio's calibration drifts: a camera is bumped or re-aimed, a calibration from another day
is reused, a conversion from another system loses accuracy. Then no body can line up with
every view, and the refinement fits a compromise (on the development take, the held-out
cameras' keypoints sat 20-60 px off in one direction for every landmark and both people).

The people filmed are a calibration object: every confident 2D keypoint that two or more
cameras see constrains the rig. :func:`refine_rig` adjusts each camera's pose, a rotation
``R' = exp(omega) R`` and a moved centre ``c' = c + dc``, together with the keypoints' 3D
positions (first triangulated with the given rig, left/right swaps undone) so as to minimise
the robust reprojection error of the detections:

    E = mean_{t,v,k} w rho(|pi_v'(X_tk) - y_tvk| / f_v; sigma)
        + w_prior mean_v (C(|omega_v| / s_R) + C(|dc_v| / s_c)),   C(x) = sqrt(x^2 + e^2) - e

rho is Geman-McClure on the view angle (pixels / focal length), so a detection of the wrong
person or a swapped limb pulls little. The prior keeps each camera near its given pose: it
fixes the gauge (a rig moved as a whole explains the detections as well) and keeps the
world frame (floor, up axis) where the calibration put it. It grows about linearly with a
change (C, a Charbonnier of small ``e``), so one bumped camera takes the correction while the
others stay where they were; a quadratic prior spreads it over every camera, which moves the
world frame (on a synthetic rig with one camera turned 1.4 deg and another moved 4 cm, the
untouched cameras ended 0.13-0.45 deg and 6-22 mm off with it, 0.04-0.2 deg and 0.4-9 mm with C).
A camera's small move and small turn look alike from a few metres, so the data alone may not
tell them apart. Intrinsics are kept.

Honest by construction: every ``check_every``-th frame is held back from the fit, and the
refined rig is accepted only if, on those frames, each camera's detections agree better
with the keypoints triangulated from the *other* cameras (leave one camera out, the way
``mvcap validate`` checks a refinement).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import roma
import torch

from mvcap.cameras import Rig, cam_to_pixels, project
from mvcap.errors import MvcapError
from mvcap.fit import SolverConfig, lbfgs
from mvcap.triangulate import match_swaps, triangulate_keypoints

__all__ = [
    "RigRefineError",
    "RigRefineConfig",
    "RigRefineResult",
    "projected_from_others",
    "leave_one_out_offsets",
    "leave_one_out_px",
    "rig_fit_warnings",
    "offset_warnings",
    "refine_rig",
    "refine_session_rig",
    "apply_rig",
    "stack_detections",
    "format_result",
]


class RigRefineError(MvcapError):
    """The detections cannot refine the rig (too few, or views that never share a keypoint)."""


@dataclass(frozen=True)
class RigRefineConfig:
    """Settings of :func:`refine_rig` (``configs/rigrefine.toml``)."""

    min_confidence: float = 0.5  # detections below this confidence are ignored
    gm_sigma_deg: float = 1.0  # Geman-McClure scale of the reprojection error, degrees of view angle
    rotation_sigma_deg: float = 2.0  # prior scale of a camera's rotation change
    centre_sigma_m: float = 0.05  # ... and of its centre's move
    w_prior: float = 1e-2
    prior_eps: float = 0.05  # the prior is ~linear in a change beyond this fraction of its sigma (see the module doc)
    iterations: int = 300  # L-BFGS iterations at most
    check_every: int = 5  # every this-many-th frame is held back to check the result (>= 2)
    min_gain: float = 0.05  # accept when the held-back frames' mean leave-one-out error falls by this fraction
    warn_rotation_deg: float = 5.0  # a larger change than this is reported as suspicious
    warn_centre_m: float = 0.25

    def __post_init__(self):
        if not 0 <= self.min_confidence < 1:
            raise ValueError(f"min_confidence must be in [0, 1), got {self.min_confidence}")
        for name in ("gm_sigma_deg", "rotation_sigma_deg", "centre_sigma_m", "prior_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.w_prior < 0 or self.iterations < 1:
            raise ValueError("w_prior must be >= 0 and iterations >= 1")
        if self.check_every < 2:
            raise ValueError(f"check_every must be >= 2 (1 would hold back every frame), got {self.check_every}")


@dataclass(frozen=True)
class RigRefineResult:
    """rig: the refined rig (the given one's intrinsics, new poses); rotation_deg (V,) and
    centre_m (V,): how far each camera turned and moved; before_px / after_px (V,): each
    camera's median leave-one-out reprojection error on the held-back frames (pixels);
    accepted: whether those errors fell by ``min_gain`` on average; fit_frames / check_frames:
    how many frames calibrated and checked; points: the 3D keypoints fitted; seconds."""

    rig: Rig
    rotation_deg: np.ndarray
    centre_m: np.ndarray
    before_px: np.ndarray
    after_px: np.ndarray
    accepted: bool
    fit_frames: int
    check_frames: int
    points: int
    seconds: float
    warnings: tuple[str, ...] = field(default=())

    @property
    def gain(self) -> float:
        """Relative fall of the mean leave-one-out error on the held-back frames (> 0: better)."""
        before, after = np.nanmean(self.before_px), np.nanmean(self.after_px)
        return float(1.0 - after / before) if before > 0 else 0.0


def _from_others(rig: Rig, keypoints: np.ndarray, view: int, flip_index=None) -> tuple[np.ndarray, np.ndarray]:
    """The keypoints (T, K, 3) triangulated from the cameras other than ``view``, and that
    camera's detections (T, K, 3) read with their left/right swaps against them undone
    (:func:`mvcap.triangulate.match_swaps`)."""
    kp = np.asarray(keypoints, np.float64)
    V = kp.shape[1]
    others = [v for v in range(V) if v != view]
    X = triangulate_keypoints(rig.subset([rig.names[v] for v in others]), kp[:, others], flip_index=flip_index)
    X = X.points_world
    return X, match_swaps(rig.subset([rig.names[view]]), kp[:, view], X, flip_index=flip_index)[1]


def projected_from_others(rig: Rig, keypoints: np.ndarray, view: int, flip_index=None) -> np.ndarray:
    """(T, K, 2) camera ``view``'s pixels of the keypoints triangulated from the other cameras
    (NaN where they are not); keypoints (T, V, K, 3) ``[x, y, confidence]`` in the rig's
    distorted images."""
    return _project(rig, view, _from_others(rig, keypoints, view, flip_index)[0])


def _project(rig: Rig, view: int, X: np.ndarray) -> np.ndarray:
    T, K, _ = X.shape
    X = X.reshape(-1, 3)
    uv = project(rig.subset([rig.names[view]]), torch.as_tensor(np.nan_to_num(X)), distort=True)[0].numpy()
    return np.where(np.isfinite(X).all(-1)[:, None], uv, np.nan).reshape(T, K, 2)


def leave_one_out_offsets(rig: Rig, keypoints: np.ndarray, min_confidence: float = 0.5, flip_index=None) -> np.ndarray:
    """(V, 4) per camera, between its confident detections (left/right swaps against the
    others undone) and the keypoints triangulated from the other cameras, projected into it
    (:func:`projected_from_others`): the median distance (pixels), the median offset (x, y),
    projected minus detected, and how many detections were compared (NaN, NaN, NaN, 0 where none)."""
    kp = np.asarray(keypoints, np.float64)
    out = np.full((kp.shape[1], 4), np.nan)
    out[:, 3] = 0
    for h in range(len(out)):
        X, det = _from_others(rig, kp, h, flip_index)
        d = _project(rig, h, X) - det[..., :2]
        ok = (det[..., 2] >= min_confidence) & np.isfinite(d).all(-1)
        if ok.any():
            out[h] = (np.median(np.linalg.norm(d[ok], axis=-1)), *np.median(d[ok], 0), ok.sum())
    return out


def leave_one_out_px(rig: Rig, keypoints: np.ndarray, min_confidence: float = 0.5, flip_index=None) -> np.ndarray:
    """(V,) each camera's median leave-one-out distance (pixels; :func:`leave_one_out_offsets`)."""
    return leave_one_out_offsets(rig, keypoints, min_confidence, flip_index)[:, 0]


def rig_fit_warnings(
    rig: Rig, keypoints: np.ndarray, flip_index=None, min_confidence: float = 0.5, min_share: float = 0.6,
    min_height_frac: float = 0.01,
) -> list[str]:  # fmt: skip
    """Cameras that the rig does not fit: where the keypoints triangulated from the other
    cameras land off this camera's detections in one direction for most landmarks (the median
    offset at least ``min_share`` of the median distance and ``min_height_frac`` of the image
    height). A detector's own errors point every way; a camera turned or moved since the
    calibration shifts them all alike. keypoints (T, V, K, 3); needs 3 or more cameras."""
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 4 or kp.shape[1] < 3:
        return []
    return offset_warnings(rig, leave_one_out_offsets(rig, kp, min_confidence, flip_index), min_share, min_height_frac)


def offset_warnings(rig: Rig, offsets: np.ndarray, min_share: float = 0.6, min_height_frac: float = 0.01) -> list[str]:
    """:func:`rig_fit_warnings` from :func:`leave_one_out_offsets` already measured (V, 4);
    a camera with fewer than 20 detections compared is not judged."""
    out = []
    for cam, (dist, dx, dy, n) in zip(rig, offsets, strict=True):
        if n >= 20 and math.hypot(dx, dy) >= max(min_share * dist, min_height_frac * cam.height):
            out.append(
                f"camera {cam.name}: the other cameras' triangulation lands ({dx:+.0f}, {dy:+.0f}) px off its "
                f"detections, alike for most landmarks ({dist:.0f} px median distance): the rig may not fit this "
                "take; `mvcap rig refine` corrects the camera poses"
            )
    return out


def _split(T: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices to fit and to hold back: every ``every``-th frame (from the middle of the
    first block) is held back."""
    held = np.zeros(T, bool)
    held[every // 2 :: every] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def refine_rig(
    rig: Rig, keypoints: np.ndarray, cfg: RigRefineConfig = RigRefineConfig(), flip_index=None
) -> RigRefineResult:
    """Refine the cameras' poses of ``rig`` from 2D detections ``keypoints`` (T, V, K, 3)
    ``[x, y, confidence]`` in its distorted images (frames of one or more people stacked on
    the T axis); flip_index: the landmark set's left/right exchange (see
    :func:`mvcap.triangulate.triangulate_keypoints`). See the module doc."""
    t0 = time.perf_counter()
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 4 or kp.shape[1] != len(rig) or kp.shape[3] != 3:
        raise RigRefineError(f"keypoints must be (T, V={len(rig)}, K, 3) [x, y, confidence], got {kp.shape}")
    T, V, K, _ = kp.shape
    if V < 2:
        raise RigRefineError("a rig of one camera has nothing to refine against: it needs two or more")
    fit_idx, check_idx = _split(T, cfg.check_every)
    if len(check_idx) == 0 or len(fit_idx) < 2:
        raise RigRefineError(
            f"{T} frames are too few: every {cfg.check_every}th frame is held back to check the result and "
            "the rest calibrate; give more frames (spread over the take, they calibrate better)"
        )
    tri = triangulate_keypoints(rig, kp[fit_idx], flip_index=flip_index)
    X0 = tri.points_world.reshape(-1, 3)  # (P, 3)
    det = tri.keypoints.transpose(0, 2, 1, 3).reshape(-1, V, 3)  # (P, V, 3) swaps undone
    ok = np.isfinite(X0).all(-1)
    seen = (det[..., 2] >= cfg.min_confidence) & np.isfinite(det[..., :2]).all(-1) & ok[:, None]
    keep = seen.sum(1) >= 2
    X0, det, seen = X0[keep], det[keep], seen[keep]
    views_seen = seen.sum(0)
    if len(X0) < 20 or (views_seen == 0).any():
        missing = [rig.names[v] for v in range(V) if views_seen[v] == 0]
        raise RigRefineError(
            f"too few keypoints seen by two or more cameras ({len(X0)})"
            + (f"; cameras {missing} share none with the others" if missing else "")
            + ": run `mvcap detect` on more frames, or lower min_confidence"
        )

    f64 = torch.float64
    cams = rig.tensors(dtype=f64)
    R0, c0 = cams["R_world2cam"], torch.as_tensor(np.stack([c.center_world for c in rig]), dtype=f64)
    focal = torch.sqrt(cams["K"][:, 0, 0] * cams["K"][:, 1, 1])  # (V,)
    y = torch.as_tensor(np.nan_to_num(det[..., :2]), dtype=f64)  # (P, V, 2)
    w = torch.as_tensor(seen, dtype=f64)
    sigma2 = math.radians(cfg.gm_sigma_deg) ** 2
    s_r, s_c = math.radians(cfg.rotation_sigma_deg), cfg.centre_sigma_m
    X = torch.tensor(X0, dtype=f64, requires_grad=True)
    omega = torch.zeros(V, 3, dtype=f64, requires_grad=True)
    dc = torch.zeros(V, 3, dtype=f64, requires_grad=True)

    def poses() -> tuple[torch.Tensor, torch.Tensor]:
        R = roma.rotvec_to_rotmat(omega) @ R0
        return R, -(R @ (c0 + dc)[..., None])[..., 0]

    def objective() -> torch.Tensor:
        R, t = poses()
        cam = torch.einsum("vij,pj->vpi", R, X) + t[:, None]
        uv = cam_to_pixels(cam, cams["K"], cams["dist"]).permute(1, 0, 2)  # (P, V, 2)
        d2 = ((uv - y) ** 2).sum(-1) / focal**2  # squared view angle
        data = (w * d2 / (d2 + sigma2)).sum() / w.sum()
        e = cfg.prior_eps  # Charbonnier: ~quadratic below e * sigma, ~linear beyond
        turn = torch.sqrt((omega**2).sum(-1) / s_r**2 + e**2) - e
        move = torch.sqrt((dc**2).sum(-1) / s_c**2 + e**2) - e
        prior = (turn + move).mean()
        return data + cfg.w_prior * prior

    lbfgs([X, omega, dc], objective, SolverConfig(iterations=cfg.iterations, history=100, tolerance_grad=1e-10))
    with torch.no_grad():
        R, t = poses()
    refined = Rig(tuple(replace(c, R_world2cam=R[v].numpy(), t_world2cam=t[v].numpy()) for v, c in enumerate(rig)))
    check = kp[check_idx]
    before = leave_one_out_px(rig, check, cfg.min_confidence, flip_index)
    after = leave_one_out_px(refined, check, cfg.min_confidence, flip_index)
    rotation = np.degrees(omega.detach().norm(dim=-1).numpy())
    centre = dc.detach().norm(dim=-1).numpy()
    notes = []
    for v, name in enumerate(rig.names):
        if rotation[v] > cfg.warn_rotation_deg or centre[v] > cfg.warn_centre_m:
            notes.append(
                f"camera {name} turned {rotation[v]:.1f} deg and moved {1000 * centre[v]:.0f} mm: more than a "
                "calibration drifts; check that the rig belongs to this take"
            )
    mean_b, mean_a = np.nanmean(before), np.nanmean(after)
    accepted = bool(np.isfinite(mean_a) and mean_a <= (1.0 - cfg.min_gain) * mean_b)
    return RigRefineResult(refined, rotation, centre, before, after, accepted, len(fit_idx), len(check_idx),
                           int(len(X0)), time.perf_counter() - t0, tuple(notes))  # fmt: skip


def format_result(res: RigRefineResult) -> str:
    """A per-camera table of what changed and how the held-back frames agree, before -> after."""
    lines = [
        f"rig refined from {res.points} keypoints on {res.fit_frames} frames; checked on {res.check_frames} "
        f"held-back frames ({res.seconds:.1f} s)",
        f"{'camera':>10s}  {'turned':>8s}  {'moved':>8s}  held-back leave-one-out error (median px)",
    ]
    for v, cam in enumerate(res.rig):
        lines.append(
            f"{cam.name:>10s}  {res.rotation_deg[v]:6.2f} deg  {1000 * res.centre_m[v]:5.0f} mm  "
            f"{res.before_px[v]:6.1f} -> {res.after_px[v]:6.1f}"
        )
    verdict = "better" if res.accepted else "not better enough"
    lines.append(f"mean {np.nanmean(res.before_px):.1f} -> {np.nanmean(res.after_px):.1f} px "
                 f"({100 * res.gain:+.0f} %): {verdict}")  # fmt: skip
    lines += [f"warning: {n}" for n in res.warnings]
    return "\n".join(lines)


def stack_detections(keypoint_sets: Sequence[np.ndarray]) -> np.ndarray:
    """Frames of several people (each (T_i, V, K, 3)) stacked on the frame axis, without the
    frames nobody was detected in."""
    kept = [k[(np.nan_to_num(k[..., 2]) > 0).any((1, 2))] for k in keypoint_sets]
    return np.concatenate(kept) if kept else np.zeros((0, 0, 0, 3))


def refine_session_rig(
    paths: Sequence[str | Path], frames=None, cfg: RigRefineConfig = RigRefineConfig()
) -> RigRefineResult:
    """:func:`refine_rig` from the detections stored in the sessions ``paths``: one take's
    sessions (a session per person), which must share one rig and one landmark set. frames: a
    :class:`mvcap.frames.FrameSelection` (or None: every frame) resolved in each session."""
    from mvcap.capture import Session
    from mvcap.keypoints import keypoint_set

    if not paths:
        raise RigRefineError("no session given")
    sets, rig, fmt = [], None, None
    for p in paths:
        with Session.open(p) as s:
            if not s.has_detections:
                raise RigRefineError(f"{p} has no detections; run `mvcap detect` first")
            if rig is None:
                rig, fmt, first = s.rig, s.keypoint_format, p
            elif not _same_rig(rig, s.rig):
                raise RigRefineError(f"{p} and {first} have different rigs: refine one take's sessions together")
            elif s.keypoint_format != fmt:
                raise RigRefineError(f"{p} has {s.keypoint_format} keypoints, {first} {fmt}: one landmark set only")
            idx = None if frames is None else frames.resolve(s.num_frames, what=f"session {p}")
            sets.append(s.read_keypoints(idx))
    return refine_rig(rig, stack_detections(sets), cfg, keypoint_set(fmt).flip_index)


def _same_rig(a: Rig, b: Rig) -> bool:
    x, y = a.to_arrays(), b.to_arrays()
    return a.names == b.names and all(np.allclose(x[k], y[k]) for k in ("K", "dist", "R_world2cam", "t_world2cam"))


def apply_rig(paths: Sequence[str | Path], rig: Rig) -> None:
    """Store ``rig`` in each session (:meth:`mvcap.capture.Session.replace_rig`; the rig it had
    is kept as ``/rig_original``)."""
    from mvcap.capture import Session

    for p in paths:
        with Session.open(p, mode="a") as s:
            s.replace_rig(rig)
