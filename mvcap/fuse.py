"""Multi-view fusion of per-view body estimates (ReFit's multi-view procedure).

Each view yields its own body update, fitted in the world frame (the per-view fits share
the world frame, so no camera-frame conversion is needed). Fusion averages them into one body:

* joint rotations, the global orientation included: chordal L2 mean of rotation matrices,
  projected back to SO(3) by SVD with a determinant guard against reflections;
* root translation: a plain mean or (default) a depth-aware least squares that trusts each
  view less along its own optical axis, where a single view sees depth poorly.

Pure functions on torch tensors. Shapes: V views, J joints, B frames.
"""

from __future__ import annotations

import roma
import torch
from torch import Tensor

__all__ = [
    "rotation_average",
    "fuse_translations",
    "fuse_bodies",
]


def rotation_average(rotmats: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted chordal L2 mean of rotations.

    rotmats: (V, ..., 3, 3) the estimates to average over dim 0; weights: (V, ...) >= 0 or
    None (uniform). Returns (..., 3, 3) proper rotations (det +1, reflection-safe).
    Where all weights of an entry are zero, the uniform mean is used.
    """
    if rotmats.shape[-2:] != (3, 3):
        raise ValueError(f"rotmats must be (V, ..., 3, 3), got {tuple(rotmats.shape)}")
    if weights is None:
        weights = torch.ones(rotmats.shape[:-2], dtype=rotmats.dtype, device=rotmats.device)
    weights = weights.to(rotmats.dtype)
    total = weights.sum(0, keepdim=True)
    weights = torch.where(total > 0, weights / total.clamp_min(1e-12), torch.full_like(weights, 1.0 / rotmats.shape[0]))
    mean = (weights[..., None, None] * rotmats).sum(0)
    return roma.special_procrustes(mean)  # nearest rotation, det +1


def fuse_translations(
    transl_world: Tensor,
    view_dirs_world: Tensor | None = None,
    weights: Tensor | None = None,
    depth_trust: float = 0.05,
) -> Tensor:
    """Fuse per-view world translations (V, ..., 3) into one (..., 3).

    With ``view_dirs_world`` (V, ..., 3) unit optical-axis directions, each view's estimate
    is trusted fully across its image plane and only ``depth_trust`` along its axis:
    ``T = (sum_v w_v P_v)^-1 sum_v w_v P_v T_v`` with ``P_v = I - (1 - depth_trust) d d^T``.
    Without directions: the weighted mean.
    """
    if weights is None:
        weights = torch.ones(transl_world.shape[:-1], dtype=transl_world.dtype, device=transl_world.device)
    weights = weights.to(transl_world.dtype).clamp_min(0) + 1e-9
    if view_dirs_world is None:
        return (weights[..., None] * transl_world).sum(0) / weights.sum(0)[..., None]
    d = view_dirs_world / view_dirs_world.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=transl_world.dtype, device=transl_world.device)
    P = eye - (1.0 - depth_trust) * d[..., :, None] * d[..., None, :]  # (V, ..., 3, 3)
    A = (weights[..., None, None] * P).sum(0)
    b = (weights[..., None, None] * P @ transl_world[..., None]).sum(0)
    return torch.linalg.solve(A, b)[..., 0]


def fuse_bodies(
    pose_rotvecs: Tensor,
    transl_world: Tensor,
    joint_weights: Tensor | None = None,
    view_dirs_world: Tensor | None = None,
    translation: str = "ray",
    depth_trust: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """Fuse V per-view world-frame bodies into one.

    pose_rotvecs: (V, B, J, 3) axis-angle, joint 0 the world-frame global orientation;
    transl_world: (V, B, 3); joint_weights: (V, B, J) confidences (e.g. how much of the
    joint's skin the view saw) or None; view_dirs_world: (V, 3) optical axes (needed for
    ``translation="ray"``). Returns (pose_rotvecs (B, J, 3), transl (B, 3)).
    """
    if translation not in ("ray", "mean"):
        raise ValueError(f"translation fusion must be 'ray' or 'mean', got {translation!r}")
    rotmats = roma.rotvec_to_rotmat(pose_rotvecs)
    fused = roma.rotmat_to_rotvec(rotation_average(rotmats, joint_weights))
    root_w = None if joint_weights is None else joint_weights[..., 0]
    dirs = None
    if translation == "ray":
        if view_dirs_world is None:
            raise ValueError("translation='ray' needs view_dirs_world (V, 3)")
        dirs = view_dirs_world[:, None, :].expand_as(transl_world).to(transl_world.dtype)
    return fused, fuse_translations(transl_world, dirs, root_w, depth_trust)
