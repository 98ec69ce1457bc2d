"""Fitting the body to 2D targets in every view (a SMPLify-style objective).

Objective for B frames, V views, P target points (mesh vertices or joints)::

    E = w_data * sum_v sum_i w_vi rho(|pi_v(X_i) - y_vi| / s_v) / sum w
      + w_init * |delta_pose|^2  + w_limits * limits(pose) + w_prior * prior(pose)
      + w_temporal * |pose - pose_prev|^2 + w_betas * |betas - betas_known|^2

``rho`` is Geman-McClure, divided by sigma^2 so that it saturates at 1 for outliers;
``s_v`` is the person's size in view v (the diagonal of the projected body's bounding box),
which makes the data term independent of image resolution and distance, as in the
refinement paper. The pose is parameterised as a local rotation update of the initial
estimate (``R_j = R_j_init exp(delta_j)``), the shape is held at the subject's known betas
unless ``optimize_betas``. L-BFGS with a strong-Wolfe line search, batched over frames.

``independent_views=True`` fits one body per view (each view sees only its own targets):
the per-view updates of ReFit's multi-view fusion (see :mod:`mvcap.fuse`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import roma
import torch
from torch import Tensor

from mvcap.body import BodyModel
from mvcap.cameras import Rig, cam_to_pixels, world_to_cam, world_to_cam_per_view
from mvcap.poses import limit_violation

__all__ = ["FitConfig", "Targets", "FitResult", "fit_body", "geman_mcclure", "person_scale"]


@dataclass(frozen=True)
class FitConfig:
    """Weights and solver settings for :func:`fit_body` (loaded from TOML [fit])."""

    iterations: int = 40
    lbfgs_history: int = 20
    gm_sigma: float = 0.05  # Geman-McClure scale, as a fraction of the person's image size
    w_data: float = 1.0
    w_init: float = 1e-4  # closeness to the initial estimate, per joint, radians^2
    w_limits: float = 1e-2  # anatomical joint-limit violations, radians^2
    w_prior: float = 1e-4  # Gaussian pose prior fitted on our pose sampler (Mahalanobis)
    w_temporal: float = 0.0  # closeness to the previous frame's result (sequences)
    w_betas: float = 1e-3  # closeness to the known shape, when optimize_betas
    optimize_betas: bool = False
    optimize_transl: bool = True


@dataclass(frozen=True)
class Targets:
    """2D targets for the fit.

    uv: (B, V, P, 2) pixels; weight: (B, V, P) >= 0 (0 = no target);
    points: "vertices" (P = N mesh vertices) or "joints" (P = 24 body joints);
    distorted: True if ``uv`` are in the distorted camera image, False for the
    undistorted pinhole image (the image space the renderer works in).
    """

    uv: Tensor
    weight: Tensor
    points: str = "vertices"
    distorted: bool = False

    def __post_init__(self):
        if self.uv.ndim != 4 or self.uv.shape[-1] != 2:
            raise ValueError(f"Targets.uv must be (B, V, P, 2), got {tuple(self.uv.shape)}")
        if self.weight.shape != self.uv.shape[:-1]:
            raise ValueError(f"Targets.weight must be {tuple(self.uv.shape[:-1])}, got {tuple(self.weight.shape)}")
        if self.points not in ("vertices", "joints"):
            raise ValueError(f"Targets.points must be 'vertices' or 'joints', got {self.points!r}")


@dataclass(frozen=True)
class FitResult:
    """pose_rotvecs (B, 24, 3); betas (B, K); transl (B, 3) (with a view axis
    (B, V, ...) when fitted with independent views); loss (B,); residual_px (B, V)
    weighted mean target distance after the fit; iterations and seconds of the solver."""

    pose_rotvecs: Tensor
    betas: Tensor
    transl: Tensor
    loss: Tensor
    residual_px: Tensor
    iterations: int
    seconds: float


def geman_mcclure(sq_residual: Tensor, sigma: float) -> Tensor:
    """rho(x) / sigma^2 = x^2 / (sigma^2 + x^2), from squared residuals; in [0, 1)."""
    return sq_residual / (sigma * sigma + sq_residual)


def person_scale(uv_pixels: Tensor) -> Tensor:
    """Diagonal of the bounding box of projected points: (..., P, 2) -> (...,) pixels."""
    lo = uv_pixels.amin(dim=-2)
    hi = uv_pixels.amax(dim=-2)
    return (hi - lo).norm(dim=-1).clamp_min(1.0)


class PosePrior:
    """A Gaussian prior on joint rotation vectors (mean, inverse covariance per joint),
    fitted on mvcap's own anatomical pose sampler so it can be shipped freely."""

    def __init__(self, mean: Tensor, precision: Tensor):
        self.mean = mean  # (23, 3)
        self.precision = precision  # (23, 3, 3)

    @classmethod
    def from_sampler(cls, num_samples: int = 4000, seed: int = 0) -> PosePrior:
        import numpy as np

        from mvcap.motions import sample_poses

        poses = torch.as_tensor(sample_poses(np.random.default_rng(seed), num_samples), dtype=torch.float64)
        body = poses[:, 1:]  # (S, 23, 3) relative joint rotations
        mean = body.mean(0)
        centred = body - mean
        cov = torch.einsum("sji,sjk->jik", centred, centred) / (num_samples - 1)
        cov = cov + torch.eye(3, dtype=torch.float64) * 1e-3  # ~1.8 deg floor for rigid joints
        return cls(mean.float(), torch.linalg.inv(cov).float())

    def __call__(self, pose_rotvecs: Tensor) -> Tensor:
        d = pose_rotvecs[..., 1:, :] - self.mean.to(pose_rotvecs)
        return torch.einsum("...ji,jik,...jk->...", d, self.precision.to(pose_rotvecs), d)


_PRIOR_CACHE: dict = {}


def default_pose_prior() -> PosePrior:
    if "prior" not in _PRIOR_CACHE:
        _PRIOR_CACHE["prior"] = PosePrior.from_sampler()
    return _PRIOR_CACHE["prior"]


def fit_body(
    model: BodyModel,
    rig: Rig,
    init_pose_rotvecs: Tensor,
    betas: Tensor,
    init_transl: Tensor,
    targets: Targets,
    cfg: FitConfig = FitConfig(),
    prev_pose_rotvecs: Tensor | None = None,
    independent_views: bool = False,
) -> FitResult:
    """Fit pose (and root translation, optionally shape) to 2D targets in all views.

    init_pose_rotvecs (B, 24, 3); betas (B, K) the subject's known shape; init_transl
    (B, 3); targets for B frames and the rig's V views; prev_pose_rotvecs (B, 24, 3)
    for the temporal term. With ``independent_views`` every view gets its own body
    (returned pose/transl/betas have shape (B, V, ...)).
    """
    t0 = time.perf_counter()
    B, V = targets.uv.shape[:2]
    if V != len(rig):
        raise ValueError(f"targets have {V} views but the rig has {len(rig)} cameras")
    if init_pose_rotvecs.shape != (B, 24, 3):
        raise ValueError(f"init_pose_rotvecs must be (B={B}, 24, 3), got {tuple(init_pose_rotvecs.shape)}")
    dtype = torch.float32
    device = init_pose_rotvecs.device
    T = rig.tensors(device=device, dtype=dtype)
    dist = T["dist"] if targets.distorted else None
    uv_t = targets.uv.to(dtype)
    w_t = targets.weight.to(dtype).clamp_min(0)

    # In independent mode the batch is (B*V) bodies, each seen by one view.
    nb = B * V if independent_views else B
    expand = (
        (lambda x: x[:, None].expand(B, V, *x.shape[1:]).reshape(B * V, *x.shape[1:]))
        if independent_views
        else (lambda x: x)
    )
    R_init = roma.rotvec_to_rotmat(expand(init_pose_rotvecs.to(dtype)))
    betas0 = expand(betas.to(dtype))
    transl0 = expand(init_transl.to(dtype))
    prev = expand(prev_pose_rotvecs.to(dtype)) if prev_pose_rotvecs is not None else None

    delta = torch.zeros(nb, 24, 3, dtype=dtype, device=device, requires_grad=True)
    d_transl = torch.zeros(nb, 3, dtype=dtype, device=device, requires_grad=cfg.optimize_transl)
    d_betas = torch.zeros_like(betas0, requires_grad=cfg.optimize_betas)
    params = [delta] + ([d_transl] if cfg.optimize_transl else []) + ([d_betas] if cfg.optimize_betas else [])
    prior = default_pose_prior() if cfg.w_prior > 0 else None

    def project_points(points: Tensor) -> Tensor:  # (nb, P, 3) -> (B, V, P, 2)
        if independent_views:
            cam = world_to_cam_per_view(points.view(B, V, *points.shape[1:]), T["R_world2cam"], T["t_world2cam"])
        else:
            cam = world_to_cam(points, T["R_world2cam"], T["t_world2cam"])
        return cam_to_pixels(cam, T["K"], dist)

    def current(delta_, d_transl_, d_betas_):
        rotmats = R_init @ roma.rotvec_to_rotmat(delta_)
        out = model(rotmats=rotmats, betas=betas0 + d_betas_, transl=transl0 + d_transl_)
        pts = out.vertices if targets.points == "vertices" else out.joints
        return rotmats, pts

    with torch.no_grad():
        _, pts0 = current(delta, d_transl, d_betas)
        scale = person_scale(project_points(pts0))  # (B, V)
    wsum = w_t.sum(-1).clamp_min(1e-6)  # (B, V)
    view_has_data = (w_t.sum(-1) > 0).to(dtype)

    def per_frame_loss():
        rotmats, pts = current(delta, d_transl, d_betas)
        uv = project_points(pts)
        sq = ((uv - uv_t) ** 2).sum(-1) / scale[..., None] ** 2
        data = (w_t * geman_mcclure(sq, cfg.gm_sigma)).sum(-1) / wsum  # (B, V)
        data = (data * view_has_data).sum(-1)  # (B,)
        pose = roma.rotmat_to_rotvec(rotmats)
        reg = cfg.w_init * (delta**2).sum((-1, -2))
        if cfg.w_limits > 0:
            reg = reg + cfg.w_limits * limit_violation(pose)
        if prior is not None:
            reg = reg + cfg.w_prior * prior(pose)
        if prev is not None and cfg.w_temporal > 0:
            reg = reg + cfg.w_temporal * ((pose - prev) ** 2).sum((-1, -2))
        if cfg.optimize_betas:
            reg = reg + cfg.w_betas * (d_betas**2).sum(-1)
        if independent_views:
            reg = reg.view(B, V).sum(-1)
        return cfg.w_data * data + reg, uv

    optimizer = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=cfg.iterations,
        history_size=cfg.lbfgs_history,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure():
        optimizer.zero_grad()
        loss = per_frame_loss()[0].sum()
        loss.backward()
        return loss

    if cfg.iterations > 0:
        optimizer.step(closure)
    n_iter = int(optimizer.state[optimizer._params[0]].get("n_iter", 0)) if cfg.iterations > 0 else 0

    with torch.no_grad():
        loss, uv = per_frame_loss()
        dist_px = (uv - uv_t).norm(dim=-1)
        residual = (w_t * dist_px).sum(-1) / wsum
        residual = torch.where(view_has_data > 0, residual, torch.full_like(residual, float("nan")))
        rotmats = R_init @ roma.rotvec_to_rotmat(delta)
        pose = roma.rotmat_to_rotvec(rotmats)
        transl = transl0 + d_transl
        betas_out = betas0 + d_betas
        if independent_views:
            pose, transl, betas_out = (x.view(B, V, *x.shape[1:]) for x in (pose, transl, betas_out))
    return FitResult(pose, betas_out, transl, loss, residual, n_iter, time.perf_counter() - t0)
