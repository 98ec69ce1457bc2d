"""Cues beside the dense targets: an independent detector's keypoints and person masks as data
terms of the fitting kit (:mod:`mvcap.fit`), and how much to trust each view.

Dense displacement targets can be wrong (a predictor off its training distribution, a
person the network has never seen); when they are, nothing else holds the body. The cues
here are the same evidence the cross-validation measures against (:mod:`mvcap.evidence`):

* **keypoints**: the detector's landmarks (its definitions on our mesh) projected into the
  distorted image, Geman-McClure robust, confidence-weighted, normalised by the person's
  pixel height per view;
* **silhouette**: sampled body vertices projected outside the person mask are pulled back by
  the mask's distance transform (body pixels outside the mask), normalised the same way;
* **view trust**: a view whose evidence disagrees with the current body far more than the
  other views do (a dead or black camera, someone else detected, heavy occlusion) gets a
  lower weight for every cue, from robust re-weighting across views;
* **field check**: where the dense targets of a body part move that part's landmarks away
  from the detector's keypoints in a view (by more than ``field_tolerance`` of the height),
  that part's targets in that view are dropped for the round: a predictor off its training
  distribution shows itself against independent evidence before the fit follows it;
* **depth hold**: with a single live camera, image evidence barely constrains the body's
  distance along that camera's axis, so one bad round of targets could push it metres
  away or swing its limbs along the line of sight; each joint's depth in that camera is held
  to the initial estimate (a soft quadratic that precise targets can still move by a few
  centimetres).

Each term is a callable ``posed -> (B,)`` for :meth:`mvcap.fit.BodyFit.solve`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mvcap.cameras import Rig, cam_to_pixels, world_to_cam
from mvcap.evidence import view_costs, weighted_cost, weighted_parts
from mvcap.fit import DataTerm, geman_mcclure

__all__ = [
    "CueConfig",
    "outside_distance",
    "sample_outside",
    "keypoint_term",
    "silhouette_term",
    "view_trust",
    "dead_views",
    "depth_hold_term",
    "contradicting_views",
    "CUE_NAMES",
    "guard_objections",
    "carrying_view",
    "BODY_PARTS",
    "body_part_ids",
    "skin_joints",
    "landmark_shift",
    "field_check",
]

# SMPL joints by body part (hips and shoulders: the torso's corners)
BODY_PARTS: dict[str, tuple[int, ...]] = {
    "head": (12, 15),
    "torso": (0, 1, 2, 3, 6, 9, 13, 14, 16, 17),
    "arms": (18, 19, 20, 21, 22, 23),
    "legs": (4, 5, 7, 8, 10, 11),
}


@dataclass(frozen=True)
class CueConfig:
    """Cues and safeguards of the refinement fit (``[cues]`` of ``configs/refine.toml``)."""

    w_keypoints: float = 0.2  # detector keypoints (0 = off); the dense data term has weight w_data
    w_silhouette: float = 0.2  # body vertices outside the person mask (0 = off)
    keypoint_sigma: float = 0.05  # Geman-McClure scale, fraction of the person's height
    min_keypoint_confidence: float = 0.5
    # the detector's left/right swaps (views from behind) undone before any cue or check uses the
    # keypoints, as the initial estimate's triangulation undoes them (mvcap.triangulate)
    undo_swaps: bool = True
    silhouette_vertices: int = 600  # vertices sampled for the silhouette term
    trust: bool = True  # down-weight views that disagree with the body far more than the others
    trust_ratio: float = 2.5  # a view costing more than this x the median view is down-weighted
    guard: bool = True  # keep a round's update only if it agrees better with the evidence
    guard_margin: float = 1e-4  # ... by at least this much (cost units: fraction of height + 1 - IoU)
    # ... and worsens neither cue by more than this (keypoints: fraction of height, silhouettes:
    # IoU) to above its noise floor (a detector's own landmark error, a mask's edge error):
    # within the floor a cue's change says nothing
    guard_tolerance: tuple[float, float] = (0.0025, 0.005)
    guard_floor: tuple[float, float] = (0.02, 0.15)  # keypoints: 2 % of height; silhouettes: 1 - IoU
    # per-view veto: reject a round that raises any one trusted view's evidence cost (keypoint
    # distance as a fraction of height + 1 - IoU) by more than this: no view pays for the others; < 0 = off
    guard_view: float = 0.005
    # ... and, per trusted view, neither cue alone by more than guard_view to above its floor
    # (stricter: on the studio benchmark it also rejects good rounds, flow 10.6 -> 15.8 mm)
    guard_view_cues: bool = False
    # support: the update must also agree better (weighted mean over the other trusted views)
    # without the view it helps most: one camera alone cannot carry an update (needs >= 3 views)
    guard_support: bool = True
    guard_support_cues: bool = True  # ... and each cue, by the per-cue rule, without the view it helps most
    # a rejected update is tried again at 1/2, 1/4, ... of its length, this many times (0 = off)
    guard_backtrack: int = 4
    # a frame fails as "contradictory evidence" when, in most views with evidence, its final body
    # is farther than this from the keypoints (fraction of height) or below this silhouette IoU
    contradiction: tuple[float, float] = (0.2, 0.15)
    w_depth_hold: float = 1.0  # single live camera: hold the body's depth in it to the init (0 = off)
    # ... softly, as fractions of the init's distance: (the joints' centroid, each joint relative
    # to the centroid); 0 = that part off. 5 %: 15 cm at 3 m
    depth_hold_sigma: tuple[float, float] = (0.05, 0.02)
    field_check: bool = True  # drop a body part's dense targets in a view that move its landmarks away
    field_tolerance: float = 0.01  # ... from the detector's keypoints by more than this (fraction of height)

    def __post_init__(self):
        for name in ("guard_tolerance", "guard_floor", "contradiction", "depth_hold_sigma"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} takes two numbers, e.g. {list(getattr(CueConfig, name))}")
        nonneg = (self.w_keypoints, self.w_silhouette, self.guard_margin, self.w_depth_hold, self.field_tolerance,
                  self.guard_backtrack,
                  *self.guard_tolerance,
                  *self.guard_floor, *self.contradiction, *self.depth_hold_sigma)  # fmt: skip
        if min(nonneg) < 0:
            raise ValueError("cue weights, guard margins, tolerances and floors must be >= 0")
        if self.keypoint_sigma <= 0 or self.trust_ratio <= 1:
            raise ValueError("keypoint_sigma must be > 0 and trust_ratio > 1")


def outside_distance(masks) -> Tensor:
    """(V, H, W) masks in [0, 1] (or bool) -> (V, 1, H, W) float64 distance (px) to the mask,
    0 inside; all zeros for an empty or full mask (no information). A list of V (H_v, W_v)
    masks (views of different sizes) gives the distances on the common canvas, 0 beyond each
    view's image (see :mod:`mvcap.render`), where the mask says nothing."""
    import cv2

    from mvcap.render import pad_views

    out = []
    for m in masks if isinstance(masks, (list, tuple)) else np.asarray(masks, np.float32):
        m = np.asarray(m, np.float32)
        outside = (m < 0.5).astype(np.uint8)
        out.append(cv2.distanceTransform(outside, cv2.DIST_L2, 3) if outside.any() and not outside.all() else
                   np.zeros(m.shape, np.float32))  # fmt: skip
    return torch.as_tensor(pad_views(out)[:, None], dtype=torch.float64)


def sample_outside(dt: Tensor, uv: Tensor) -> Tensor:
    """Distance outside the mask at pixels: dt (V, 1, H, W), uv (B, V, P, 2) -> (B, V, P)
    (bilinear; 0 beyond the image, where the mask says nothing)."""
    V, _, H, W = dt.shape
    gx = (uv[..., 0] + 0.5) / W * 2 - 1
    gy = (uv[..., 1] + 0.5) / H * 2 - 1
    grid = torch.stack([gx, gy], -1).transpose(0, 1).to(dt.dtype)  # (V, B, P, 2)
    d = torch.nn.functional.grid_sample(dt, grid, align_corners=False, padding_mode="zeros")
    return d[:, 0].transpose(0, 1).to(uv.dtype)


def _project(rig_tensors: dict, points: Tensor, distorted: bool) -> Tensor:
    cam = world_to_cam(points, rig_tensors["R_world2cam"], rig_tensors["t_world2cam"])
    return cam_to_pixels(cam, rig_tensors["K"], rig_tensors["dist"] if distorted else None)


def keypoint_term(
    definition,
    rig: Rig,
    keypoints: np.ndarray,
    heights_px: np.ndarray,
    cfg: CueConfig,
    view_weights: np.ndarray | None = None,
    device=None,
) -> DataTerm | None:
    """The detector's keypoints as a data term. keypoints (V, K, 3) ``[x, y, conf]`` in the
    distorted images; heights_px (V,) the person's pixel height per view; view_weights (V,);
    device: where the fit runs (default the CPU). None when there is nothing to fit (no
    confident defined keypoint)."""
    kp = np.asarray(keypoints, np.float64)
    ok = (kp[..., 2] >= cfg.min_keypoint_confidence) & np.isfinite(kp[..., :2]).all(-1) & definition.defined[None]
    h = np.where(np.isfinite(heights_px) & (np.asarray(heights_px) > 1), heights_px, np.nan)
    ok &= np.isfinite(h)[:, None]
    if cfg.w_keypoints <= 0 or not ok.any():
        return None
    vw = np.ones(len(rig)) if view_weights is None else np.asarray(view_weights, np.float64)
    f32 = torch.float32
    w = torch.as_tensor(np.where(ok, kp[..., 2], 0.0) * vw[:, None], dtype=f32, device=device)  # (V, K)
    y = torch.as_tensor(np.nan_to_num(kp[..., :2]), dtype=f32, device=device)
    scale = torch.as_tensor(np.nan_to_num(h, nan=1.0), dtype=f32, device=device)
    cams = rig.tensors(dtype=f32, device=device or "cpu")
    jw = torch.as_tensor(definition.joint_weights, dtype=f32, device=device)
    vwt = torch.as_tensor(definition.vertex_weights, dtype=f32, device=device)
    vid = torch.as_tensor(definition.vertex_ids, device=device)
    wsum = w.sum().clamp_min(1e-9)

    def keypoints_2d(posed) -> Tensor:
        k3 = torch.einsum("kj,bjc->bkc", jw, posed.joints) + torch.einsum("km,bmc->bkc", vwt, posed.vertices[:, vid])
        uv = _project(cams, k3, distorted=True)  # (B, V, K, 2)
        sq = ((uv - y) ** 2).sum(-1) / scale[:, None] ** 2
        return cfg.w_keypoints * (w * geman_mcclure(sq, cfg.keypoint_sigma)).sum((-1, -2)) / wsum

    return keypoints_2d


def silhouette_term(
    rig_pinhole: Rig,
    masks: list[np.ndarray | None],
    heights_px: np.ndarray,
    num_vertices: int,
    cfg: CueConfig,
    view_weights: np.ndarray | None = None,
    distances: Tensor | None = None,
) -> DataTerm | None:
    """Body vertices outside the person masks as a data term. masks: per view (H, W) bool in
    the undistorted pinhole image (None: no mask); heights_px (V,); view_weights (V,).
    distances: :func:`silhouette_distances` of the masks, already made (a frame's rounds share
    them; on the device the fit runs on), else made here on the CPU."""
    have = np.array([m is not None and m.any() for m in masks])
    h = np.asarray(heights_px, np.float64)
    have &= np.isfinite(h) & (h > 1)
    if cfg.w_silhouette <= 0 or not have.any():
        return None
    dt = silhouette_distances(rig_pinhole, masks) if distances is None else distances
    dev = dt.device
    vw = np.ones(len(masks)) if view_weights is None else np.asarray(view_weights, np.float64)
    w = torch.as_tensor(np.where(have, vw, 0.0) / np.where(have, h, 1.0), dtype=torch.float32, device=dev)  # (V,)
    wsum = torch.as_tensor(np.where(have, vw, 0.0).sum(), dtype=torch.float32, device=dev).clamp_min(1e-9)
    ids = torch.as_tensor(np.linspace(0, num_vertices - 1, cfg.silhouette_vertices).round().astype(np.int64),
                          device=dev)  # fmt: skip
    cams = rig_pinhole.tensors(dtype=torch.float32, device=dev)

    def silhouette(posed) -> Tensor:
        uv = _project(cams, posed.vertices[:, ids], distorted=False)  # (B, V, E, 2)
        d = sample_outside(dt, uv).mean(-1)  # (B, V) px
        return cfg.w_silhouette * (d * w).sum(-1) / wsum

    return silhouette


def silhouette_distances(rig_pinhole: Rig, masks: list[np.ndarray | None], device=None) -> Tensor:
    """(V, 1, H, W) float32 distances outside the masks (:func:`outside_distance`) on
    ``device``, for :func:`silhouette_term`. A view without a mask has no information (0);
    each view's distances are at its own size, on the canvas."""
    full = [
        m if m is not None else np.zeros((c.height, c.width), bool) for m, c in zip(masks, rig_pinhole, strict=True)
    ]
    return outside_distance(full).to(device or "cpu", torch.float32)


def depth_hold_term(rig: Rig, view: int, joints_world: Tensor, cfg: CueConfig) -> DataTerm | None:
    """Hold the body's depth in camera ``view`` to the initial estimate: joints_world (J, 3) its
    joints (world, metres). One camera sees where each joint is across the image but hardly how
    far: the initial estimate (from all cameras' keypoints) says that better. Two soft parts,
    with (s_c, s_j) = ``cfg.depth_hold_sigma``::

        w [ ((zc - zc0) / (s_c zc0))^2 + mean_j ((z_j - zc - (z0_j - zc0)) / (s_j zc0))^2 ]

    (z_j: joint j's depth, zc: the joints' mean depth, a 0 marks the init's; the second part
    holds each joint's depth relative to the mean, i.e. the limbs along the line of sight).
    None when off or the body is behind the camera."""
    cams = rig.tensors(dtype=torch.float32, device=joints_world.device)
    R, t = cams["R_world2cam"][view], cams["t_world2cam"][view]
    z0 = joints_world.to(torch.float32) @ R[2] + t[2]  # (J,)
    zc0 = float(z0.mean())
    s_c, s_j = cfg.depth_hold_sigma
    if cfg.w_depth_hold <= 0 or not zc0 > 0 or (s_c <= 0 and s_j <= 0):
        return None
    rel0 = z0 - zc0

    def depth_hold(posed) -> Tensor:
        z = posed.joints @ R[2] + t[2]  # (B, J)
        zc = z.mean(-1)
        cost = torch.zeros_like(zc)
        if s_c > 0:
            cost = cost + ((zc - zc0) / (s_c * zc0)) ** 2
        if s_j > 0:
            cost = cost + (((z - zc[:, None] - rel0) / (s_j * zc0)) ** 2).mean(-1)
        return cfg.w_depth_hold * cost

    return depth_hold


def contradicting_views(parts: np.ndarray, view_weights: np.ndarray, cfg: CueConfig) -> list[int]:
    """Views whose evidence no body agrees with, when they are most of the views with evidence
    (else []): parts (V, 2) per-view keypoint distance (fraction of height) and 1 - IoU
    (:func:`mvcap.evidence.view_cost_parts`); view_weights (V,) (0: view not used)."""
    p = np.asarray(parts, np.float64)
    used = np.isfinite(p).any(-1) & (np.asarray(view_weights) > 0)
    far = (np.nan_to_num(p[:, 0], nan=0.0) > cfg.contradiction[0]) | (
        np.nan_to_num(p[:, 1], nan=0.0) > 1.0 - cfg.contradiction[1])  # fmt: skip
    bad = np.flatnonzero(used & far)
    return bad.tolist() if used.sum() >= 1 and len(bad) > used.sum() / 2 else []


def _best_gain(delta: np.ndarray, w: np.ndarray) -> int | None:
    """The view whose weighted cost falls most (delta (V,) new - old, NaN: no evidence; w (V,),
    0: not used), or None when fewer than 3 views count or none gains."""
    ok = np.isfinite(delta) & (w > 0)
    if ok.sum() < 3:
        return None
    best = int(np.flatnonzero(ok)[np.argmin((w * delta)[ok])])
    return best if delta[best] < 0 else None


def carrying_view(costs_new: np.ndarray, costs_old: np.ndarray, view_weights: np.ndarray) -> int | None:
    """The view that alone carries an update, or None: per-view costs (V,) of the new and the
    current body (NaN: no evidence) and weights (V,) (0: not used). With the view whose
    weighted cost falls most left out, the others' weighted mean cost must not rise; checked
    when at least 3 views have evidence (with 2, the per-view veto decides)."""
    d = np.asarray(costs_new, np.float64) - np.asarray(costs_old, np.float64)
    w = np.asarray(view_weights, np.float64)
    best = _best_gain(d, w)
    if best is None:
        return None
    rest = np.isfinite(d) & (w > 0)
    rest[best] = False
    return best if float((w * d)[rest].sum() / w[rest].sum()) > 0 else None


CUE_NAMES = ("keypoints", "silhouettes")  # the columns of per-view cue costs (V, 2)


def guard_objections(
    new_parts: np.ndarray, old_parts: np.ndarray, view_weights: np.ndarray, names, cfg: CueConfig
) -> list[str]:
    """Why the acceptance guard rejects an update, in words ([]: accept it). new_parts,
    old_parts (V, 2): per-view cue costs of the new and the current body
    (:func:`mvcap.evidence.view_cost_parts`; NaN: no evidence); view_weights (V,) (0: view not
    used); names: the views' names. The rules are those of :class:`CueConfig`'s guard fields."""
    new_p, old_p = np.asarray(new_parts, np.float64), np.asarray(old_parts, np.float64)
    w = np.asarray(view_weights, np.float64)
    floor = np.asarray(cfg.guard_floor)

    # per cue: an update that buys silhouette agreement with keypoint disagreement (or the
    # reverse) follows targets the evidence does not support
    def cue_worse(weights: np.ndarray) -> list[int]:
        n, o = weighted_parts(new_p, weights), weighted_parts(old_p, weights)
        return [c for c in range(2) if n[c] > o[c] + cfg.guard_tolerance[c] and n[c] > floor[c]]

    worse = cue_worse(w)
    why = [f"the {CUE_NAMES[c]}" for c in worse]
    if cfg.guard_view >= 0:  # no view pays for the others (NaN, no evidence, compares False)
        c_new, c_old = view_costs(new_p), view_costs(old_p)
        grew = [names[v] for v in range(len(w)) if w[v] > 0 and c_new[v] > c_old[v] + cfg.guard_view]
        if cfg.guard_view_cues:
            rose = (new_p > old_p + cfg.guard_view) & (new_p > floor)
            grew += [f"{CUE_NAMES[c]} of {names[v]}" for v, c in zip(*np.nonzero(rose))
                     if w[v] > 0 and names[v] not in grew]  # fmt: skip
        why += [f"the evidence of {', '.join(grew)}"] if grew else []
    if cfg.guard_support:
        alone = carrying_view(view_costs(new_p), view_costs(old_p), w)
        why += [f"the cameras other than {names[alone]}, which alone carries it"] if alone is not None else []
        if cfg.guard_support_cues:  # ... nor either cue's gain (the per-cue rule without its best view)
            for c in range(2):
                best = None if c in worse else _best_gain(new_p[:, c] - old_p[:, c], w)
                if best is not None and c in cue_worse(np.where(np.arange(len(w)) == best, 0.0, w)):
                    why.append(f"the {CUE_NAMES[c]} of the cameras other than {names[best]}")
    if not why and not weighted_cost(new_p, w) < weighted_cost(old_p, w) - cfg.guard_margin:
        why.append("the cameras' keypoints and masks")
    return why


def view_trust(costs: np.ndarray, ratio: float) -> np.ndarray:
    """(V,) weights in [0, 1] from per-view disagreement costs (NaN: no evidence, weight 1): a
    view costing more than ``ratio`` x the median of the views gets (ratio median / cost)^2."""
    c = np.asarray(costs, np.float64)
    w = np.ones_like(c)
    ok = np.isfinite(c)
    if ok.sum() < 2:
        return w
    ref = max(float(np.median(c[ok])), 1e-3)
    bad = ok & (c > ratio * ref)
    w[bad] = (ratio * ref / c[bad]) ** 2
    return w


def dead_views(photos: np.ndarray, min_std: float = 2.0) -> list[int]:
    """Views whose photo carries no picture: (V, H, W, 3) uint8 -> indices of views whose pixel
    standard deviation is below ``min_std`` levels (black, white or frozen-grey cameras)."""
    if isinstance(photos, Tensor):  # on its device, one read-back
        std = photos[:, ::4, ::4].to(torch.float32).flatten(1).std(1, correction=0).tolist()
    else:
        std = [float(img[::4, ::4].astype(np.float32).std()) for img in np.asarray(photos)]
    return [v for v, s in enumerate(std) if s < min_std]


def body_part_ids(model, definition) -> tuple[np.ndarray, np.ndarray]:
    """Body part (index into :data:`BODY_PARTS`) of each vertex (N,), by its heaviest skinning
    joint, and of each landmark of ``definition`` (K,), by its heaviest joint or vertex (-1:
    undefined)."""
    part_of_joint = np.full(24, -1)
    for p, joints in enumerate(BODY_PARTS.values()):
        part_of_joint[list(joints)] = p
    skin = model.weights.detach().cpu().numpy()
    vertex_part = part_of_joint[skin.argmax(1)]
    landmark_part = np.full(len(definition.names), -1)
    for k in range(len(definition.names)):
        if definition.joint_weights[k].sum() > 0:
            landmark_part[k] = part_of_joint[int(definition.joint_weights[k].argmax())]
        elif definition.vertex_weights[k].sum() > 0:
            landmark_part[k] = vertex_part[definition.vertex_ids[int(definition.vertex_weights[k].argmax())]]
    return vertex_part, landmark_part


def skin_joints(model, min_weight: float = 0.5) -> np.ndarray:
    """(N,) each vertex's heaviest skinning joint where its weight exceeds ``min_weight``, else -1:
    the vertices whose mean target displacement moves a joint in :func:`landmark_shift`."""
    skin = model.weights.detach().cpu().numpy()
    return np.where(skin.max(1) > min_weight, skin.argmax(1), -1)


def landmark_shift(
    definition, uv_now: Tensor, joints_uv: Tensor, uv_target: Tensor, weight: Tensor, skin_joint: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the landmarks of ``definition`` are now and where the dense targets would put them.

    uv_now (V, N, 2) the vertices' projections, joints_uv (V, 24, 2), uv_target / weight (V, N, 2) /
    (V, N) the targets (weight 0: none). A landmark at a vertex moves with that vertex's target;
    one at a joint with the mean target displacement of the visible vertices skinned to that
    joint (``skin_joint`` (N,): each vertex's heaviest joint, -1 to leave it out; 5 at least).
    Returns (before (V, K, 2), after (V, K, 2), moved (V, K) bool: all the landmark's joints and
    vertices have targets).
    """
    jw, vw, vid = definition.joint_weights, definition.vertex_weights, definition.vertex_ids
    uv_now, joints_uv = uv_now.detach().cpu().numpy(), joints_uv.detach().cpu().numpy()
    tgt, w = uv_target.detach().cpu().numpy(), weight.detach().cpu().numpy() > 0
    V, K = w.shape[0], len(definition.names)
    before, after, scored = np.zeros((V, K, 2)), np.zeros((V, K, 2)), np.zeros((V, K), bool)
    for v in range(V):
        moved = np.where(w[v][:, None], tgt[v] - uv_now[v], np.nan)
        jmove = np.full((24, 2), np.nan)
        for j in range(24):
            sel = (skin_joint == j) & w[v]
            if sel.sum() >= 5:
                jmove[j] = moved[sel].mean(0)
        missing = ((jw > 0) & np.isnan(jmove[:, 0])[None]).any(1) | ((vw > 0) & np.isnan(moved[vid, 0])[None]).any(1)
        scored[v] = ~missing
        before[v] = jw @ joints_uv[v] + vw @ uv_now[v][vid]
        after[v] = before[v] + jw @ np.nan_to_num(jmove) + vw @ np.nan_to_num(moved[vid])
    return before, after, scored & definition.defined[None]


def field_check(
    definition,
    uv_now: Tensor,
    joints_uv: Tensor,
    uv_target: Tensor,
    weight: Tensor,
    keypoints_uv: np.ndarray,
    heights_px: np.ndarray,
    landmark_part: np.ndarray,
    skin_joint: np.ndarray,
    tolerance: float,
    min_landmarks: int = 2,
) -> list[tuple[int, int]]:
    """(view, body part) pairs whose dense targets move the part's landmarks away from the
    detector's keypoints by more than ``tolerance`` (median, fraction of the person's height);
    every part of a view where most of the parts that could be checked fail.

    Arrays as in :func:`landmark_shift`, all in the undistorted pinhole image; keypoints_uv
    (V, K, 3) ``[x, y, usable]`` (NaN or usable 0: not scored), heights_px (V,).
    """
    before, after, scored = landmark_shift(definition, uv_now, joints_uv, uv_target, weight, skin_joint)
    has_targets = (weight.detach().sum(-1) > 0).tolist()
    out = []
    for v in range(len(heights_px)):
        kp = keypoints_uv[v]
        ok = scored[v] & np.isfinite(kp[:, :2]).all(1) & (kp[:, 2] > 0)
        if not has_targets[v] or not np.isfinite(heights_px[v]) or not ok.any():
            continue
        d0 = np.linalg.norm(before[v] - kp[:, :2], axis=-1) / heights_px[v]
        d1 = np.linalg.norm(after[v] - kp[:, :2], axis=-1) / heights_px[v]
        checked, failed = [], []
        for p in range(len(BODY_PARTS)):
            sel = ok & (landmark_part == p)
            if sel.sum() >= min_landmarks:
                checked.append(p)
                if np.median(d1[sel]) > np.median(d0[sel]) + tolerance:
                    failed.append(p)
        # a field that fails most of the parts it can be checked on is not trusted on the others
        out += [(v, p) for p in (range(len(BODY_PARTS)) if 2 * len(failed) > len(checked) else failed)]
    return out
