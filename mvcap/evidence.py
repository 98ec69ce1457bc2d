"""How well a body agrees with what the cameras saw, measured the same way for any estimate.

The evidence of a view is an independent detector's output (2D keypoints and a person mask)
and the photo. A body's agreement with it: the projected landmarks' distance to the
confident keypoints (pixels and % of the person's pixel height), the silhouette IoU and the
photometric error of the textured render. Cross-validation (:mod:`mvcap.validate`) uses it
in cameras left out of the fit; refinement's acceptance guard uses it to keep an update only
when it agrees better with every camera's evidence than the estimate it replaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mvcap.body import BodyModel
from mvcap.cameras import Rig, project, projection_bounds
from mvcap.render import render, undistort_images

__all__ = [
    "EvidenceConfig",
    "ViewEvidence",
    "Agreement",
    "person_height_px",
    "view_evidence",
    "agreement",
    "view_cost_parts",
    "view_costs",
    "evidence_cost",
    "weighted_cost",
    "weighted_parts",
]


@dataclass(frozen=True)
class EvidenceConfig:
    """What counts as evidence: confident keypoints and mask pixels."""

    min_keypoint_confidence: float = 0.5
    mask_threshold: float = 0.5

    def __post_init__(self):
        if not 0 <= self.min_keypoint_confidence <= 1:
            raise ValueError(f"min_keypoint_confidence must be in [0, 1], got {self.min_keypoint_confidence}")
        if not 0 < self.mask_threshold < 1:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")


@dataclass(frozen=True)
class ViewEvidence:
    """What an independent detector says about one view: keypoints (K, 3) ``[x, y, conf]`` in
    the stored (distorted) image; mask (H, W) bool person pixels in the undistorted pinhole
    image, or None; photo (H, W, 3) uint8 undistorted; height_px: the person's pixel height."""

    keypoints: np.ndarray
    mask: np.ndarray | None
    photo: np.ndarray | None
    height_px: float


@dataclass(frozen=True)
class Agreement:
    """How well one body agrees with one view's evidence (NaN where there is no evidence).

    keypoint_*_px / _pct: median and 90th percentile distance of the projected landmarks to
    the confident detector keypoints (pixels, % of the person's height); keypoints: how many;
    iou: silhouette IoU; photometric: mean |render - photo| over the body's pixels (0-255)."""

    keypoint_median_px: float
    keypoint_p90_px: float
    keypoint_median_pct: float
    keypoint_p90_pct: float
    keypoints: int
    iou: float
    photometric: float


def person_height_px(keypoints: np.ndarray, mask: np.ndarray | None, min_conf: float) -> float:
    """The person's pixel height from the detector's evidence: the mask's vertical extent, else
    the confident keypoints' (x1.15 for the head above the eyes and the soles below the ankles)."""
    if mask is not None and mask.any():
        rows = np.flatnonzero(mask.any(axis=1))
        return float(rows[-1] - rows[0] + 1)
    ok = keypoints[:, 2] >= min_conf
    if ok.sum() < 2:
        return float("nan")
    y = keypoints[ok, 1]
    return float(1.15 * (y.max() - y.min()))


def view_evidence(camera: Rig, keypoints: np.ndarray, mask: np.ndarray | None, photo: np.ndarray | None,
                  cfg: EvidenceConfig = EvidenceConfig()) -> ViewEvidence:  # fmt: skip
    """Evidence of one view from stored detections: keypoints (K, 3); mask (H, W) uint8 0-255
    or float [0, 1] in the stored image; photo (H, W, 3) uint8 stored image (both undistorted
    here into the pinhole image the renderer draws in)."""
    m = None
    if mask is not None:
        mf = np.asarray(mask, np.float32)
        if mf.max() > 1.0:
            mf = mf / 255.0
        m = undistort_images(camera, mf[None])[0] >= cfg.mask_threshold
    ph = None if photo is None else undistort_images(camera, np.asarray(photo)[None])[0]
    kp = np.asarray(keypoints, np.float32)
    height_mask = None if mask is None else np.asarray(mask, np.float32) >= cfg.mask_threshold * (
        255.0 if np.asarray(mask).dtype == np.uint8 else 1.0)  # fmt: skip
    return ViewEvidence(kp, m, ph, person_height_px(kp, height_mask, cfg.min_keypoint_confidence))


def agreement(
    model: BodyModel,
    definition,
    camera: Rig,
    pose_rotvecs,
    betas,
    transl,
    evidence: ViewEvidence,
    appearance=None,
    cfg: EvidenceConfig = EvidenceConfig(),
) -> Agreement:
    """Measure one body (pose_rotvecs (24, 3), betas (K,), transl (3,)) in one camera (a
    one-view rig) against that view's evidence. ``appearance``: the subject's
    :class:`mvcap.refine.Appearance`; None (or an untextured one) skips the photometric error."""
    if len(camera) != 1:
        raise ValueError(f"agreement measures one view; got a rig of {len(camera)}")
    dev = model.v_template.device  # the body is posed and rendered there; the costs are on the host

    def param(x) -> torch.Tensor:
        x = x.detach() if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x), dtype=torch.float32)
        return x.to(dev, torch.float32)[None]

    with torch.no_grad():
        out = model(param(pose_rotvecs), param(betas), param(transl))
        verts = out.vertices[0]
        kp3 = definition.evaluate(out.joints.double(), out.vertices.double())[0]
        uv = project(camera, kp3, distort=True)[0].cpu().numpy()
    det = evidence.keypoints
    ok = definition.defined & (det[:, 2] >= cfg.min_keypoint_confidence) & np.isfinite(det[:, :2]).all(1)
    d = np.linalg.norm(uv[ok] - det[ok, :2], axis=1)
    med, p90 = (float(np.median(d)), float(np.percentile(d, 90))) if d.size else (math.nan, math.nan)
    h = evidence.height_px if evidence.height_px > 0 else math.nan
    iou = photometric = math.nan
    if appearance is not None and not appearance.textured:
        appearance = None
    if evidence.mask is not None or (evidence.photo is not None and appearance is not None):
        passes = ("albedo", "mask") if appearance is not None else ("mask",)
        pinhole = camera.without_distortion()
        box = body_box(pinhole, verts)  # only there can the body's pixels be
        x0, y0, bw, bh = box
        inside = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        body, rp = np.zeros((bh, bw), bool), None
        if bw and bh:
            window = pinhole if (bw, bh) == pinhole[0].image_size else pinhole.cropped([box], [[bw, bh]])
            _, rp = render(window, verts, model.faces, passes=passes,
                           **(appearance.render_kwargs() if appearance is not None else {}))  # fmt: skip
            body = (rp.get("mask")[0, ..., 0] > 0.5).cpu().numpy()  # a bool image: 1/4 of the float's bytes
        if evidence.mask is not None:
            mask = np.asarray(evidence.mask, bool)
            inter = int(np.logical_and(body, mask[inside]).sum())
            union = int(body.sum()) + int(mask.sum()) - inter
            iou = inter / union if union else math.nan
        if appearance is not None and evidence.photo is not None and body.any():
            albedo = rp.get("albedo")[0].cpu().numpy()[body] * 255.0
            photo = evidence.photo[inside][body].astype(np.float32)
            photometric = float(np.abs(albedo - photo).mean())
    return Agreement(med, p90, 100 * med / h, 100 * p90 / h, int(d.size), iou, photometric)


def body_box(camera: Rig, vertices_world: torch.Tensor) -> tuple[int, int, int, int]:
    """``(x0, y0, w, h)``: the part of a one-view rig's (pinhole) image that a body's pixels
    can cover (its vertices' projected bounds, a pixel to spare); the whole image when the body
    comes within 10 cm of the camera or behind it (a triangle clipped at the near plane can
    reach beyond its vertices' bounds); w = h = 0 when the body is outside the image."""
    W, H = camera[0].image_size
    lo_x, lo_y, hi_x, hi_y, z_min = projection_bounds(camera, vertices_world)[0]
    if not z_min > 0.1:
        return 0, 0, W, H
    x0, y0 = max(0, math.floor(lo_x) - 1), max(0, math.floor(lo_y) - 1)
    x1, y1 = min(W, math.ceil(hi_x) + 2), min(H, math.ceil(hi_y) + 2)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else (0, 0, 0, 0)


def view_cost_parts(agreements: list[Agreement]) -> np.ndarray:
    """(V, 2) disagreement of one body with each view, per cue: the median landmark distance as a
    fraction of the person's height, and 1 - silhouette IoU (NaN where a view lacks that cue)."""
    out = np.full((len(agreements), 2), np.nan)
    for i, a in enumerate(agreements):
        if math.isfinite(a.keypoint_median_pct):
            out[i, 0] = a.keypoint_median_pct / 100.0
        if math.isfinite(a.iou):
            out[i, 1] = 1.0 - a.iou
    return out


def view_costs(parts: np.ndarray) -> np.ndarray:
    """(V,) disagreement of one body with each view from its :func:`view_cost_parts` (V, 2):
    the median landmark distance as a fraction of the person's height + (1 - IoU); a cue
    without evidence counts 0, a view with no evidence at all is NaN."""
    p = np.asarray(parts, np.float64)
    return np.where(np.isfinite(p).any(-1), np.nansum(p, -1), np.nan)


def evidence_cost(
    model: BodyModel,
    definition,
    rig: Rig,
    pose_rotvecs,
    betas,
    transl,
    evidence: list[ViewEvidence | None],
    view_weights: np.ndarray | None = None,
    cfg: EvidenceConfig = EvidenceConfig(),
) -> tuple[float, np.ndarray]:
    """How much one body disagrees with every view's evidence: (weighted mean cost, (V, 2) per
    view and cue costs, see :func:`view_cost_parts`); views without evidence are ignored. Init
    and result measured by this same function is what the acceptance guard compares."""
    agreements = []
    for v, ev in enumerate(evidence):
        if ev is None:
            agreements.append(Agreement(*([math.nan] * 4), 0, math.nan, math.nan))
            continue
        agreements.append(agreement(model, definition, rig.subset([rig.names[v]]), pose_rotvecs, betas, transl, ev,
                                    None, cfg))  # fmt: skip
    parts = view_cost_parts(agreements)
    return weighted_cost(parts, view_weights), parts


def weighted_parts(parts: np.ndarray, view_weights: np.ndarray | None = None) -> np.ndarray:
    """(C,) the weighted mean of each column of per-view costs (V, C) over the views that have
    it (finite) and weight > 0; NaN where none has."""
    p = np.asarray(parts, np.float64)
    w = np.ones(len(p)) if view_weights is None else np.asarray(view_weights, np.float64)
    ok = np.isfinite(p) & (w[:, None] > 0)
    total = np.where(ok, w[:, None], 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.where(ok, w[:, None] * np.nan_to_num(p), 0.0).sum(0) / total, np.nan)


def weighted_cost(parts: np.ndarray, view_weights: np.ndarray | None = None) -> float:
    """The weighted mean of the per-view costs (:func:`view_costs` of ``parts`` (V, 2)) over the
    views with evidence and weight > 0."""
    return float(weighted_parts(view_costs(parts)[:, None], view_weights)[0])
