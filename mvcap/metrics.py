"""Evaluation metrics: MPJPE, PA-/N-MPJPE, PVE, PA-/N-PVE (3D) and EPE (2D flow).

Implementation: torch, computed in float64. Every function accepts numpy arrays or torch
tensors; per-sample metrics return the same kind as ``pred`` (numpy in -> numpy out,
torch in -> torch out, float64), scalars are Python floats. Unbatched input (K, 3) is
treated as a batch of one. Per-sample metrics are in the input unit (metres inside mvcap);
only :func:`evaluate_body` reports millimetres, as the refinement paper's tables do.

Definitions (pred, gt: (B, K, 3); K joints or vertices; errors averaged over K):

* **MPJPE / PVE** (default, ``root_aligned=False``): mean Euclidean distance in the world
  frame, *no alignment*. In a calibrated multi-view rig the global position is part of
  what is measured, so this is mvcap's headline number. ``root_aligned=True`` subtracts
  the root (pelvis, joint ``root_index=0``) of each skeleton first, which is the
  convention of 3DPW / Human3.6M benchmarks and of the refinement paper's tables. For PVE
  the root is given by ``pred_root`` / ``gt_root`` (B, 3) (the pelvis joint; what
  :func:`evaluate_body` passes), falling back to the vertex centroid.
* **PA-** (Procrustes aligned): pred is first mapped by the optimal similarity transform
  (rotation, uniform scale, translation; Umeyama 1991, reflection excluded) onto gt.
* **N-** (scale normalised, Rhodin et al. CVPR 2018, the paper's ref [48]): both poses are
  centred at the root (``center="root"``, the pelvis joint, as in [48] which works on
  root-relative poses) and pred is multiplied by the single least-squares optimal scale
  ``s = <pred_c, gt_c> / <pred_c, pred_c>``; no rotation. Hence N-MPJPE <= root-aligned MPJPE
  always. N-PVE centres vertices at the same pelvis joints when ``pred_root``/``gt_root``
  are given (``evaluate_body`` does), else at the vertex centroid.
* **EPE**: mean end-point error (pixels) of a 2D flow field over valid (masked) pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "procrustes_align",
    "scale_align",
    "mpjpe",
    "pa_mpjpe",
    "n_mpjpe",
    "pve",
    "pa_pve",
    "n_pve",
    "evaluate_body",
    "epe",
    "METRIC_KEYS",
]

METRIC_KEYS = ("MPJPE", "PA-MPJPE", "N-MPJPE", "PVE", "PA-PVE", "N-PVE")
_EPS = 1e-12


def _t(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(torch.float64) if not x.requires_grad else x.to(torch.float64)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array or tensor ({exc})") from exc


def _pair(pred, gt) -> tuple[Tensor, Tensor, bool]:
    """-> (pred (B,K,3), gt (B,K,3), numpy_out) float64, with shape checks."""
    numpy_out = not isinstance(pred, Tensor)
    p, g = _t(pred, "pred"), _t(gt, "gt")
    if p.ndim == 2:
        p = p[None]
    if g.ndim == 2:
        g = g[None]
    if p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(
            f"pred must have shape (B, K, 3) or (K, 3), got {tuple(_t(pred, 'pred').shape)}"
        )
    if p.shape != g.shape:
        raise ValueError(
            f"pred {tuple(p.shape)} and gt {tuple(g.shape)} must have the same (B, K, 3) shape; "
            "check the joint set / vertex count and the batch size"
        )
    if p.shape[1] == 0:
        raise ValueError("pred and gt have no points (K = 0)")
    return p, g, numpy_out


def _out(x: Tensor, numpy_out: bool):
    return x.detach().cpu().numpy() if numpy_out else x


def _root(points: Tensor, root_index: int | None, root: Tensor | None) -> Tensor:
    """(B, 1, 3) centre: explicit root (B,3), joint ``root_index``, or the centroid."""
    if root is not None:
        r = _t(root, "root")
        if r.ndim == 1:
            r = r[None]
        if r.shape != (points.shape[0], 3):
            raise ValueError(f"root must have shape (B={points.shape[0]}, 3), got {tuple(r.shape)}")
        return r[:, None, :]
    if root_index is None:
        return points.mean(dim=1, keepdim=True)
    return points[:, root_index : root_index + 1, :]


# ------------------------------------------------------------------------------------------
# alignment
# ------------------------------------------------------------------------------------------
def _procrustes(p: Tensor, g: Tensor, scale: bool = True) -> Tensor:
    mu_p = p.mean(dim=1, keepdim=True)
    mu_g = g.mean(dim=1, keepdim=True)
    X = p - mu_p
    Y = g - mu_g
    K = p.shape[1]
    cov = Y.transpose(1, 2) @ X / K  # (B,3,3) = sum y x^T / K
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)  # degenerate: keep a proper rotation
    D = torch.ones_like(S)
    D[:, 2] = d
    R = U @ torch.diag_embed(D) @ Vh  # (B,3,3), det +1
    if scale:
        var_p = (X**2).sum(dim=(1, 2)) / K
        s = (S * D).sum(dim=1) / var_p.clamp_min(_EPS)
    else:
        s = torch.ones_like(S[:, 0])
    return s[:, None, None] * (X @ R.transpose(1, 2)) + mu_g


def procrustes_align(pred, gt, scale: bool = True):
    """Similarity-align ``pred`` onto ``gt`` (Umeyama, reflection-safe SVD).

    pred, gt: (B, K, 3). Returns aligned pred (B, K, 3): ``s R pred + t`` minimising
    ``sum ||s R pred_k + t - gt_k||^2`` with R a proper rotation (det +1). ``scale=False``
    fixes s = 1 (rigid alignment).
    """
    p, g, numpy_out = _pair(pred, gt)
    return _out(_procrustes(p, g, scale), numpy_out)


def _scale(
    p: Tensor, g: Tensor, center: str, root_index: int, pred_root=None, gt_root=None
) -> Tensor:
    if center == "root":
        cp, cg = _root(p, root_index, pred_root), _root(g, root_index, gt_root)
    elif center == "mean":
        cp, cg = p.mean(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)
    elif center == "none":
        cp, cg = torch.zeros_like(p[:, :1]), torch.zeros_like(g[:, :1])
    else:
        raise ValueError(f"center must be 'root', 'mean' or 'none', got {center!r}")
    X, Y = p - cp, g - cg
    s = (X * Y).sum(dim=(1, 2)) / (X * X).sum(dim=(1, 2)).clamp_min(_EPS)
    return s[:, None, None] * X + cg


def scale_align(pred, gt, center: str = "root", root_index: int = 0, pred_root=None, gt_root=None):
    """Optimal-scale-only alignment (the N- metrics, Rhodin et al. 2018).

    Both point sets are centred (``center="root"``: at joint ``root_index`` or at the given
    ``pred_root``/``gt_root`` (B, 3); ``"mean"``: at their centroids; ``"none"``: not at all),
    pred is scaled by ``s = <pred_c, gt_c> / |pred_c|^2`` and moved to gt's centre.
    Returns aligned pred (B, K, 3).
    """
    p, g, numpy_out = _pair(pred, gt)
    return _out(_scale(p, g, center, root_index, pred_root, gt_root), numpy_out)


# ------------------------------------------------------------------------------------------
# per-sample errors (input unit)
# ------------------------------------------------------------------------------------------
def _mean_dist(p: Tensor, g: Tensor) -> Tensor:
    return torch.linalg.norm(p - g, dim=-1).mean(dim=-1)


def mpjpe(pred, gt, root_aligned: bool = False, root_index: int = 0):
    """Mean per-joint position error (B,). World frame unless ``root_aligned``."""
    p, g, numpy_out = _pair(pred, gt)
    if root_aligned:
        p, g = p - _root(p, root_index, None), g - _root(g, root_index, None)
    return _out(_mean_dist(p, g), numpy_out)


def pa_mpjpe(pred, gt):
    """Procrustes-aligned MPJPE (B,)."""
    p, g, numpy_out = _pair(pred, gt)
    return _out(_mean_dist(_procrustes(p, g), g), numpy_out)


def n_mpjpe(pred, gt, root_index: int = 0):
    """Scale-normalised MPJPE (B,): root-centred, optimal scale only."""
    p, g, numpy_out = _pair(pred, gt)
    return _out(_mean_dist(_scale(p, g, "root", root_index), g), numpy_out)


def pve(pred, gt, root_aligned: bool = False, pred_root=None, gt_root=None):
    """Per-vertex error (B,). World frame unless ``root_aligned`` (then vertices are centred
    at ``pred_root``/``gt_root`` (B, 3), e.g. the pelvis joints, or at the vertex centroid)."""
    p, g, numpy_out = _pair(pred, gt)
    if root_aligned:
        p, g = p - _root(p, None, pred_root), g - _root(g, None, gt_root)
    return _out(_mean_dist(p, g), numpy_out)


def pa_pve(pred, gt):
    """Procrustes-aligned per-vertex error (B,)."""
    return pa_mpjpe(pred, gt)


def n_pve(pred, gt, pred_root=None, gt_root=None):
    """Scale-normalised per-vertex error (B,): centred at ``pred_root``/``gt_root`` (B, 3)
    if given (the pelvis joints), else at the vertex centroids; optimal scale only."""
    p, g, numpy_out = _pair(pred, gt)
    if pred_root is None or gt_root is None:
        aligned = _scale(p, g, "mean", 0)
    else:
        aligned = _scale(p, g, "root", 0, pred_root, gt_root)
    return _out(_mean_dist(aligned, g), numpy_out)


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------
def evaluate_body(
    pred_joints,
    gt_joints,
    pred_vertices=None,
    gt_vertices=None,
    root_aligned: bool = False,
    root_index: int = 0,
) -> dict[str, float]:
    """Means over the batch, in MILLIMETRES (inputs in metres).

    pred_joints, gt_joints: (B, J, 3); pred_vertices, gt_vertices: (B, N, 3) or None (then
    the vertex keys are omitted). Keys: "MPJPE", "PA-MPJPE", "N-MPJPE", "PVE", "PA-PVE",
    "N-PVE". MPJPE/PVE are world-frame (no alignment) unless ``root_aligned``; vertex
    root alignment and N-PVE centre at the pelvis joint ``root_index`` of the joints.
    """
    pj, gj, _ = _pair(pred_joints, gt_joints)
    mm = 1000.0
    out = {
        "MPJPE": mpjpe(pj, gj, root_aligned=root_aligned, root_index=root_index).mean().item() * mm,
        "PA-MPJPE": pa_mpjpe(pj, gj).mean().item() * mm,
        "N-MPJPE": n_mpjpe(pj, gj, root_index=root_index).mean().item() * mm,
    }
    if (pred_vertices is None) != (gt_vertices is None):
        raise ValueError("pass both pred_vertices and gt_vertices, or neither")
    if pred_vertices is not None:
        pv, gv, _ = _pair(pred_vertices, gt_vertices)
        if pv.shape[0] != pj.shape[0]:
            raise ValueError(
                f"joints have batch {pj.shape[0]} but vertices have batch {pv.shape[0]}"
            )
        pr, gr = pj[:, root_index], gj[:, root_index]
        out["PVE"] = (
            pve(pv, gv, root_aligned=root_aligned, pred_root=pr, gt_root=gr).mean().item() * mm
        )
        out["PA-PVE"] = pa_pve(pv, gv).mean().item() * mm
        out["N-PVE"] = n_pve(pv, gv, pred_root=pr, gt_root=gr).mean().item() * mm
    return out


def epe(pred_flow, gt_flow, mask=None) -> float:
    """Mean end-point error in pixels: ``mean ||pred - gt||`` over pixels where ``mask`` is
    true (nonzero). pred_flow, gt_flow: (..., H, W, 2); mask: (..., H, W) or None (all
    pixels). Returns NaN when no pixel is valid."""
    p, g = _t(pred_flow, "pred_flow"), _t(gt_flow, "gt_flow")
    if p.shape != g.shape or p.ndim < 3 or p.shape[-1] != 2:
        raise ValueError(
            f"pred_flow {tuple(p.shape)} and gt_flow {tuple(g.shape)} must both be (..., H, W, 2)"
        )
    err = torch.linalg.norm(p - g, dim=-1)
    if mask is None:
        return err.mean().item()
    m = _t(mask, "mask") != 0
    if m.shape != err.shape:
        try:
            m = torch.broadcast_to(m, err.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"mask shape {tuple(m.shape)} does not match flow (..., H, W) {tuple(err.shape)}"
            ) from exc
    n = int(m.sum())
    if n == 0:
        return float("nan")
    return (err[m].sum() / n).item()
