"""Subject registration: fit a person's shape once and build their appearance (texture).

From a short capture of the subject (A-pose, turning on the spot, a few varied poses), with
per-frame initial body estimates and person masks and/or 2D keypoints in the session:

1. **Shape** (:func:`fit_shape`): over a handful of frames spread over the capture and all
   views at once, optimise one shared ``betas`` plus per-frame pose and root translation
   (L-BFGS, CPU). Data terms, in the distorted photo space of each view:

   * *outside*: every projected vertex should lie inside the person mask: the distance
     transform of the mask's complement, sampled at each vertex (bilinear);
   * *coverage*: every point of the mask's outline should be reached by the body: the
     distance from outline points to the nearest projected mesh edge (the candidate edges
     are re-found between L-BFGS rounds, as in ICP);
   * *keypoints* (when stored): 2D keypoints against projected joints (formats
     ``smpl_24`` and ``mediapipe_pose_33``).

   Each is a Geman-McClure of the distance divided by the person's size in that view, its
   scale shrinking over the rounds (far misfits first, then sub-pixel agreement). Priors:
   closeness to the initial pose, joint limits, a Gaussian pose prior (:mod:`mvcap.fit`)
   and ``|betas|^2``. The betas are optimised rescaled so that a unit step moves the body by
   about the same amount for every component (without it L-BFGS barely moves the weak
   components). What silhouettes can and cannot recover: stature and the large components
   come out well when the views surround the person; a component whose effect on the
   outline is below a pixel (most of betas 2-9 at a few hundred pixels of person height)
   is left to the prior; depth-only differences hidden in every view stay unknown; and
   clothing widens the silhouette (the body model has none), so the betas fit the
   *clothed* outline.

2. **Appearance** (:func:`build_appearance`): for every selected frame and view, each
   texel of the UV texture (and each vertex) is placed on the fitted posed body; where it
   is visible (z-buffer test, not seen at a grazing angle, not on a silhouette edge, inside
   the person mask when stored) the photo colour at its projection is one observation. The
   texel's colour is the per-texel **median** over all observations (as the refinement
   paper builds its textures); texels never seen take an inverse-distance blend of the
   nearest seen texels on the rest-pose body surface (3D neighbours, so colours cross UV
   seams correctly and never leak between charts), and texels outside the UV charts take
   their nearest chart texel (for bilinear lookups at chart borders).

The result is a :class:`mvcap.subject.Subject` (betas, texture, vertex colours) saved once
and reused by every later session of that person (the pre-scanned-subject workflow of
Shape ReFit).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import roma
import torch
from torch import Tensor

from mvcap.body import BodyModel, BodyParams, load_body_model
from mvcap.cameras import Camera, Rig, cam_to_pixels, world_to_cam
from mvcap.capture import Session
from mvcap.errors import MvcapError
from mvcap.fit import BodyFit, DataTerm, Regularisers, SolverConfig, geman_mcclure, person_scale
from mvcap.keypoints import register_joint_pairs
from mvcap.render import canvas_size, pad_views, rasterize, undistort_images, vertex_normals
from mvcap.subject import Subject
from mvcap.threads import torch_threads

__all__ = [
    "RegisterError",
    "ShapeFitConfig",
    "TextureConfig",
    "RegisterConfig",
    "ShapeFit",
    "BackProjection",
    "RegisterResult",
    "KEYPOINT_JOINTS",
    "select_frames",
    "fit_shape",
    "uv_texel_faces",
    "build_appearance",
    "register_subject",
    "rest_pose_pve_mm",
]


class RegisterError(MvcapError):
    """Registration cannot run on this input; the message says what is missing and how to fix it."""


# ------------------------------------------------------------------------------------------
# configs and results
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeFitConfig:
    """The joint shape + pose fit (``[shape]`` in ``configs/register.toml``)."""

    enabled: bool = True  # False: keep the initial betas, only build the appearance
    rounds: int = 10  # L-BFGS rounds; the coverage term's nearest mesh edges are re-found between them
    iterations: int = 10  # L-BFGS iterations per round
    w_outside: float = 1.0  # body outside the mask
    w_coverage: float = 1.0  # mask outline not reached by the body
    w_keypoints: float = 0.3
    gm_sigma: float = 0.05  # Geman-McClure scale, as a fraction of the person's size in the view
    gm_sigma_start: float = 0.2  # first round's scale, shrunk geometrically to gm_sigma (reaches far misfits)
    # priors, small next to the data terms: at the optimum a 1 px misfit along the outline costs ~1e-3
    w_init: float = 1e-5  # closeness to the initial pose, radians^2 per joint
    w_limits: float = 1e-3  # joint-limit violations, radians^2
    w_prior: float = 1e-6  # Gaussian pose prior (Mahalanobis)
    w_betas: float = 1e-4  # |betas|^2 (betas ~ N(0, 1) in the body model's shape space)
    outline_points: int = 400  # mask outline points per view and frame
    candidates: int = 8  # nearest projected mesh edges kept per outline point
    mask_threshold: float = 0.5
    min_keypoint_confidence: float = 0.3


@dataclass(frozen=True)
class TextureConfig:
    """Back-projection of photo colours (``[texture]`` in ``configs/register.toml``)."""

    size: int = 512  # texture width = height, texels
    min_cos: float = 0.35  # skip surface seen at a grazing angle: cos(normal, view ray) below this
    depth_tol_m: float = 0.015  # z-buffer tolerance (plus two pixel footprints)
    edge_px: int = 1  # skip pixels within this distance of the body's / person mask's outline
    fill_neighbours: int = 8  # seen texels blended to fill an unseen one


@dataclass(frozen=True)
class RegisterConfig:
    """Subject registration (``configs/register.toml``)."""

    num_frames: int = 8  # frames used, spread evenly over the capture
    frames: tuple[int, ...] = ()  # explicit session frames (overrides num_frames)
    views: tuple[str, ...] = ()  # cameras to use; empty = all
    init_betas: str = "init"  # starting shape: "init" (mean of the initial estimates) or "zero"
    threads: int = 1  # torch threads (0 = torch's default)
    shape: ShapeFitConfig = field(default_factory=ShapeFitConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)

    def __post_init__(self):
        if self.init_betas not in ("init", "zero"):
            raise RegisterError(f"init_betas must be 'init' or 'zero', got {self.init_betas!r}")
        if self.num_frames < 1:
            raise RegisterError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.texture.size < 8:
            raise RegisterError(f"texture.size must be >= 8 texels, got {self.texture.size}")


@dataclass(frozen=True)
class ShapeFit:
    """Fitted shape over F frames and V views.

    betas (10,); pose_rotvecs (F, 24, 3); transl (F, 3) metres; silhouette_iou (F, V) IoU of
    the fitted body's silhouette with the person mask (NaN without masks); keypoint_px
    (F, V) mean distance of projected joints to confident keypoints (NaN without);
    iterations: L-BFGS iterations over all rounds; seconds; cues: what the fit used
    (``"masks"``, ``"keypoints"``; empty when the shape fit was skipped).
    """

    betas: np.ndarray
    pose_rotvecs: np.ndarray
    transl: np.ndarray
    silhouette_iou: np.ndarray
    keypoint_px: np.ndarray
    iterations: int
    seconds: float
    cues: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackProjection:
    """The appearance back-projected from photos (:func:`build_appearance`; what the refinement
    renders is :class:`mvcap.refine.Appearance`): texture (S, S, 3) uint8 (row 0 = top of UV
    space, as :class:`Subject`); vertex_colors (N, 3) uint8; texel_seen (S, S) bool: texel
    observed in some photo (the rest is filled); texel_chart (S, S) bool: texel inside a UV
    triangle; observations (S, S) int16 per texel; vertex_seen (N,) bool."""

    texture: np.ndarray
    vertex_colors: np.ndarray
    texel_seen: np.ndarray
    texel_chart: np.ndarray
    observations: np.ndarray
    vertex_seen: np.ndarray

    @property
    def coverage(self) -> float:
        """Fraction of chart texels observed."""
        return float(self.texel_seen.sum() / max(self.texel_chart.sum(), 1))


@dataclass(frozen=True)
class RegisterResult:
    """subject: the registered person; frames (F,) session frames used; views: cameras used;
    shape and appearance: the two stages' outputs; path: the subject file written (or
    None); seconds."""

    subject: Subject
    frames: np.ndarray
    views: tuple[str, ...]
    shape: ShapeFit
    appearance: BackProjection
    path: Path | None
    seconds: float


# keypoint format -> (keypoint indices, SMPL joint indices); projected joints are the targets
KEYPOINT_JOINTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "smpl_24": (tuple(range(24)), tuple(range(24))),
    # MediaPipe's shoulders, elbows, wrists, hips, knees, ankles; its hips sit higher and wider
    # than SMPL's hip joints, which w_keypoints being small (next to the silhouettes) absorbs
    "mediapipe_pose_33": ((11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28), (16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)),
}
# the other detectors' landmark sets (mvcap.keypoints, `mvcap detect --from`): the same joints
KEYPOINT_JOINTS.update({n: register_joint_pairs(n) for n in ("body_25", "coco_17", "halpe_26", "coco_133")})


# ------------------------------------------------------------------------------------------
# frame selection
# ------------------------------------------------------------------------------------------
def select_frames(usable: np.ndarray, num_frames: int) -> np.ndarray:
    """Up to ``num_frames`` indices spread evenly over the usable frames (``usable`` (T,) bool)."""
    idx = np.flatnonzero(usable)
    if idx.size == 0:
        return idx
    pick = np.unique(np.round(np.linspace(0, idx.size - 1, min(num_frames, idx.size))).astype(np.int64))
    return idx[pick]


# ------------------------------------------------------------------------------------------
# shape
# ------------------------------------------------------------------------------------------
def _outline_points(mask: np.ndarray, n: int) -> np.ndarray:
    """(n', 2) float pixel coordinates spread evenly along every outline of a binary mask
    (outer boundary and holes)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2), np.float32)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32)
    if len(pts) > n:
        pts = pts[np.round(np.linspace(0, len(pts) - 1, n)).astype(np.int64)]
    return pts


def _sample_maps(maps: Tensor, uv: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear samples of maps (L, H, W) at uv (L, P, 2) pixels -> values (L, P) and an
    inside-the-image flag (L, P)."""
    L, H, W = maps.shape
    gx = uv[..., 0] / (W - 1) * 2 - 1
    gy = uv[..., 1] / (H - 1) * 2 - 1
    grid = torch.stack([gx, gy], -1)[:, None]  # (L, 1, P, 2)
    val = torch.nn.functional.grid_sample(
        maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )[:, 0, 0]
    inside = (gx.abs() <= 1) & (gy.abs() <= 1)
    return val, inside


def fit_shape(
    model: BodyModel,
    rig: Rig,
    init: BodyParams,
    masks: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    keypoint_format: str | None = None,
    cfg: ShapeFitConfig = ShapeFitConfig(),
    betas0: np.ndarray | None = None,
    progress: bool = False,
) -> ShapeFit:
    """Fit shared betas plus per-frame pose and translation to masks / keypoints in all views.

    init: F frames of initial estimates (their pose and transl start the fit); masks:
    (F, V, H, W) person masks in the photos (distorted image space), values in [0, 1]; keypoints:
    (F, V, K, 3) ``[x_px, y_px, confidence]`` in the photos, with ``keypoint_format`` one of
    :data:`KEYPOINT_JOINTS`; betas0: (10,) starting shape (default: the mean init betas).
    At least masks or keypoints are needed. See the module docstring for the objective.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    F, V = len(init), len(rig)
    if masks is None and keypoints is None:
        raise RegisterError(
            "the shape fit needs person masks or 2D keypoints; run `mvcap detect` on the session first, or "
            "disable the shape fit (shape.enabled=false) to keep the initial betas"
        )
    dtype = torch.float32
    cams = rig.tensors(dtype=dtype)
    R_init = roma.rotvec_to_rotmat(torch.as_tensor(init.pose_rotvecs, dtype=dtype))
    transl0 = torch.as_tensor(init.transl, dtype=dtype)
    b0 = np.nanmean(init.betas, 0) if betas0 is None else np.asarray(betas0, np.float64)
    betas_start = torch.as_tensor(np.nan_to_num(b0), dtype=dtype)[None]

    # ---- data: masks -> distance maps and outlines; keypoints -> joint targets
    dist_out = outline = None
    if masks is not None:
        m = np.asarray(masks, np.float32)
        if m.shape[:2] != (F, V):
            raise RegisterError(f"masks must have shape (F={F}, V={V}, H, W), got {m.shape}")
        H, W = m.shape[2:]
        binary = m >= cfg.mask_threshold
        has_person = binary.reshape(F, V, -1).any(-1)
        if not has_person.any():
            raise RegisterError("every person mask is empty; rerun the detector or check the frames (mvcap detect)")
        if not has_person.all():
            # a view where the detector missed the person just gives no silhouette terms
            empty = [(int(f), rig.names[v]) for f, v in zip(*np.nonzero(~has_person), strict=True)]
            warnings.warn(f"empty person mask in (frame, view) {empty[:5]}: those views are not used", stacklevel=2)
        flat = binary.reshape(-1, H, W)
        dt = np.stack([cv2.distanceTransform((~b).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) for b in flat])
        for v, cam in enumerate(rig):  # beyond a smaller view's image on the canvas: no information, like outside it
            dt[v::V, cam.height :] = 0
            dt[v::V, :, cam.width :] = 0
        # px from the mask's outline (half a pixel beyond the last mask pixel's centre), 0 inside
        dist_out = torch.as_tensor(np.maximum(dt - 0.5, 0), dtype=dtype)  # (F*V, H, W)
        outline = [_outline_points(b, cfg.outline_points) for b in flat]
        sizes = np.array([np.hypot(*(np.ptp(np.argwhere(b), 0) + 1)) if b.any() else np.nan for b in flat])
        sizes = np.where(np.isfinite(sizes), sizes, np.nanmedian(sizes))
        mask_scale = torch.as_tensor(sizes, dtype=dtype).view(F, V)
    kp_uv = kp_w = None
    kp_joints: tuple[int, ...] = ()
    if keypoints is not None:
        if keypoint_format not in KEYPOINT_JOINTS:
            raise RegisterError(
                f"keypoint format {keypoint_format!r} is not supported for registration; supported: "
                f"{sorted(KEYPOINT_JOINTS)}"
            )
        kp_idx, kp_joints = KEYPOINT_JOINTS[keypoint_format]
        kp = np.asarray(keypoints, np.float32)
        if kp.ndim != 4 or kp.shape[:2] != (F, V) or kp.shape[3] != 3:
            raise RegisterError(f"keypoints must have shape (F={F}, V={V}, K, 3), got {kp.shape}")
        kp = kp[:, :, list(kp_idx)]
        conf = np.nan_to_num(kp[..., 2])
        ok = np.isfinite(kp[..., :2]).all(-1) & (conf >= cfg.min_keypoint_confidence)
        kp_uv = torch.as_tensor(np.nan_to_num(kp[..., :2]), dtype=dtype)
        kp_w = torch.as_tensor(np.where(ok, conf, 0.0), dtype=dtype)
        if not bool((kp_w > 0).any()):
            kp_uv = kp_w = None  # nothing confident: keypoints cannot help

    # betas are optimised as z with betas = start + z * step: one unit of z moves the vertices by
    # ~10 cm for every component, so low-effect components converge as fast as stature does
    effect = model.shapedirs.norm(dim=1).mean(0)[: betas_start.shape[1]].to(dtype)  # (10,) m per unit
    fit = BodyFit(
        model,
        R_init,
        betas_start,
        transl0,
        Regularisers(w_init=cfg.w_init, w_limits=cfg.w_limits, w_prior=cfg.w_prior, w_betas=cfg.w_betas),
        optimize_betas=True,
        shared_betas=True,
        betas_step=0.1 / effect.clamp_min(1e-4),
        betas_ref=torch.zeros_like(betas_start),  # the shape prior: |betas|^2
        reduce="mean",
    )

    def project(points: Tensor) -> Tensor:  # (F, P, 3) -> (F, V, P, 2) distorted pixels
        return cam_to_pixels(world_to_cam(points, cams["R_world2cam"], cams["t_world2cam"]), cams["K"], cams["dist"])

    with torch.no_grad():
        scale = mask_scale if masks is not None else person_scale(project(fit.pose().vertices))  # (F, V) px
    s2 = (scale**2)[..., None]
    fv = model.faces.numpy()
    edges = np.unique(np.sort(np.concatenate([fv[:, [0, 1]], fv[:, [1, 2]], fv[:, [2, 0]]]), 1), axis=0)  # (E, 2)

    def data_terms(sigma: float, cand, cand_pts, cand_w) -> list[DataTerm]:
        """Per-frame (F,) silhouette and keypoint terms (means over the views) at robust scale
        ``sigma``; cand (F, V, C*k, 2) candidate edges' vertex ids, cand_pts (F, V, C, 2) outline
        points, cand_w (F, V, C) their weights."""

        def outside(out) -> Tensor:  # projected vertices outside the person mask
            uv = project(out.vertices)  # (F, V, N, 2)
            d, inside = _sample_maps(dist_out, uv.reshape(F * V, -1, 2))
            rho = geman_mcclure(d.view(F, V, -1) ** 2 / s2, sigma) * inside.view(F, V, -1)
            return (cfg.w_outside * rho.mean(-1)).mean(-1)

        def coverage(out) -> Tensor:  # distance from each outline point to its nearest candidate edge
            uv = project(out.vertices)
            ends = [torch.gather(uv, 2, cand[..., i, None].expand(-1, -1, -1, 2)) for i in (0, 1)]
            a, b = (e.view(*cand_pts.shape[:3], -1, 2) for e in ends)  # (F, V, C, k, 2) edge ends
            p = cand_pts[:, :, :, None]
            ab = b - a
            t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
            d = (a + t[..., None] * ab - p).norm(dim=-1).amin(-1)  # (F, V, C) px
            rho = geman_mcclure(d**2 / s2, sigma)
            return (cfg.w_coverage * (cand_w * rho).sum(-1) / cand_w.sum(-1).clamp_min(1)).mean(-1)

        def keypoints_2d(out) -> Tensor:
            uvj = project(out.joints[:, list(kp_joints)])
            rho = geman_mcclure(((uvj - kp_uv) ** 2).sum(-1) / s2, sigma)
            return (cfg.w_keypoints * (kp_w * rho).sum(-1) / kp_w.sum(-1).clamp_min(1e-6)).mean(-1)

        return ([outside, coverage] if dist_out is not None else []) + ([keypoints_2d] if kp_uv is not None else [])

    def find_candidates():
        """Nearest projected vertices of every outline point, padded to one (F, V, C) layout."""
        from scipy.spatial import cKDTree

        with torch.no_grad():
            uv = project(fit.pose().vertices).numpy()  # (F, V, N, 2)
        C = max(len(o) for o in outline)
        k = min(cfg.candidates, len(edges))
        ids = np.zeros((F, V, C, k), np.int64)
        pts = np.zeros((F, V, C, 2), np.float32)
        w = np.zeros((F, V, C), np.float32)
        for j, o in enumerate(outline):
            f, v = divmod(j, V)
            if len(o):
                mid = 0.5 * (uv[f, v][edges[:, 0]] + uv[f, v][edges[:, 1]])
                ids[f, v, : len(o)] = cKDTree(mid).query(o, k=k)[1].reshape(len(o), k)
                pts[f, v, : len(o)] = o
                w[f, v, : len(o)] = 1
        ends = edges[ids].reshape(F, V, C * k, 2)  # vertex ids of the candidate edges' ends
        return torch.as_tensor(ends), torch.as_tensor(pts), torch.as_tensor(w)

    n_iter = 0
    rounds = max(cfg.rounds, 1)
    solver = SolverConfig(cfg.iterations, history=20)
    cand = (None, None, None)
    for r in tqdm(range(rounds), desc="shape fit", unit="round", disable=not progress):
        sigma = cfg.gm_sigma_start * (cfg.gm_sigma / cfg.gm_sigma_start) ** (r / max(rounds - 1, 1))
        if outline is not None:  # the coverage term's nearest mesh edges, re-found every round (ICP)
            cand = find_candidates()
        n_iter += fit.solve(data_terms(sigma, *cand), solver)

    with torch.no_grad():
        out = fit.pose()
        pose = fit.pose_rotvecs().numpy()
        transl = fit.transl().numpy()
        kp_err = np.full((F, V), np.nan, np.float32)
        if kp_uv is not None:
            e = (project(out.joints[:, list(kp_joints)]) - kp_uv).norm(dim=-1)
            has = kp_w.sum(-1) > 0
            kp_err = np.where(has, ((kp_w > 0) * e).sum(-1) / (kp_w > 0).sum(-1).clamp_min(1), np.nan)
        iou = np.full((F, V), np.nan, np.float32)
        if masks is not None:
            iou = _silhouette_iou(rig, model, out.vertices, binary)
    return ShapeFit(
        betas=fit.betas().detach()[0].numpy().astype(np.float32),
        pose_rotvecs=pose.astype(np.float32),
        transl=transl.astype(np.float32),
        silhouette_iou=iou.astype(np.float32),
        keypoint_px=np.asarray(kp_err, np.float32),
        iterations=n_iter,
        seconds=time.perf_counter() - t0,
        cues=("masks",) * (masks is not None) + ("keypoints",) * (kp_uv is not None),
    )


def _silhouette_iou(rig: Rig, model: BodyModel, vertices: Tensor, binary: np.ndarray) -> np.ndarray:
    """(F, V) IoU between the rendered bodies and the masks (compared in the pinhole image)."""
    F, V = binary.shape[:2]
    iou = np.zeros((F, V), np.float32)
    for f in range(F):
        rendered = rasterize(rig, vertices[f], model.faces).mask.numpy()
        photo = undistort_images(rig, binary[f].astype(np.uint8), interpolation=cv2.INTER_NEAREST) > 0
        inter = (rendered & photo).sum((-1, -2))
        union = (rendered | photo).sum((-1, -2))
        iou[f] = inter / np.maximum(union, 1)
    return iou


# ------------------------------------------------------------------------------------------
# appearance
# ------------------------------------------------------------------------------------------
def uv_texel_faces(model: BodyModel, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which face covers each texel centre of a ``size`` x ``size`` texture, and where.

    Returns face_ids (S, S) int64 (-1 outside every UV triangle) and bary (S, S, 3) float32
    barycentric coordinates w.r.t. ``model.faces[face_id]`` (the corners of ``uv_faces`` and
    ``faces`` correspond). Texel (col x, row y) has its centre at ``u = (x + 0.5) / S``,
    ``v = 1 - (y + 0.5) / S`` (the convention :func:`mvcap.render.render_passes` samples with).
    """
    if model.uvs is None or model.uv_faces is None:
        raise RegisterError(f"the body model {model.path} has no UV layout (vt/ft); a texture needs one")
    uvs = model.uvs.detach().double().numpy()
    # the UV layout as a flat mesh at depth 1 seen by a unit pinhole camera: pixel = (x, y)
    pts = np.stack([uvs[:, 0] * size - 0.5, (1 - uvs[:, 1]) * size - 0.5, np.ones(len(uvs))], -1)
    cam = Camera("uv", np.eye(3), np.zeros(5), np.eye(3), np.zeros(3), (size, size))
    frags = rasterize(Rig((cam,)), torch.as_tensor(pts), model.uv_faces, backend="cpu")
    return frags.face_ids[0].numpy(), frags.bary[0].numpy()


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """image (H, W, C) sampled at uv (P, 2) pixels (clamped at the border) -> (P, C) float32."""
    H, W = image.shape[:2]
    x = np.clip(uv[:, 0], 0, W - 1)
    y = np.clip(uv[:, 1], 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2 if W > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2 if H > 1 else 0)
    wx = (x - x0)[:, None]
    wy = (y - y0)[:, None]
    x1 = np.minimum(x0 + 1, W - 1)
    y1 = np.minimum(y0 + 1, H - 1)
    im = image.astype(np.float32)
    top = im[y0, x0] * (1 - wx) + im[y0, x1] * wx
    bottom = im[y1, x0] * (1 - wx) + im[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def _median_observations(obs: list[np.ndarray], seen: list[np.ndarray], chunk: int = 1 << 16):
    """Per-point, per-channel median over the valid observations: lists (one entry per image) of
    (Q, 3) uint8 colours and (Q,) bool -> (Q, 3) float32 medians (NaN where never seen) and
    (Q,) counts. Works through the points in chunks to bound memory."""
    ok = np.stack(seen)  # (M, Q)
    count = ok.sum(0)
    Q = ok.shape[1]
    med = np.full((Q, 3), np.nan, np.float32)
    for a in range(0, Q, chunk):
        b = min(a + chunk, Q)
        vals = np.stack([o[a:b] for o in obs]).astype(np.float32)  # (M, q, 3)
        vals[~ok[:, a:b]] = np.inf  # unseen sort last
        vals.sort(axis=0)
        c = count[a:b]
        take = np.arange(b - a)
        lo, hi = np.maximum((c - 1) // 2, 0), c // 2
        m = 0.5 * (vals[lo, take] + vals[np.minimum(hi, len(obs) - 1), take])
        med[a:b] = np.where((c > 0)[:, None], m, np.nan)
    return med, count


def _fill_from_seen(colors: np.ndarray, seen: np.ndarray, rest_points: np.ndarray, k: int) -> np.ndarray:
    """Unseen rows of colors (Q, 3) := inverse-distance blend of the k nearest seen points
    (rest-pose 3D positions (Q, 3))."""
    from scipy.spatial import cKDTree

    out = colors.copy()
    if seen.all():
        return out
    k = max(1, min(k, int(seen.sum())))
    d, j = cKDTree(rest_points[seen]).query(rest_points[~seen], k=k)
    d, j = d.reshape(len(d), k), j.reshape(len(j), k)
    w = 1.0 / np.maximum(d, 1e-4)
    out[~seen] = (w[..., None] * colors[seen][j]).sum(1) / w.sum(1, keepdims=True)
    return out


def build_appearance(
    model: BodyModel,
    rig: Rig,
    images: np.ndarray,
    params: BodyParams,
    masks: np.ndarray | None = None,
    cfg: TextureConfig = TextureConfig(),
    progress: bool = False,
) -> BackProjection:
    """Median back-projected UV texture and vertex colours from photos of the fitted body.

    images: (F, V, H, W, 3) uint8 photos (the rig's distorted images); params: F frames of
    fitted body parameters (the subject's betas in every frame); masks: (F, V, H, W) person
    masks in [0, 1] or None. Visibility is tested in the undistorted pinhole image (where
    :func:`mvcap.render.rasterize` renders); colours are sampled in the photo at the
    distorted projection of the same surface point, so no photo is resampled twice.
    """
    from scipy import ndimage
    from tqdm import tqdm

    images = np.asarray(images)
    F, V = len(params), len(rig)
    if images.ndim != 5 or images.shape[:2] != (F, V) or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise RegisterError(f"images must be uint8 (F={F}, V={V}, H, W, 3), got {images.shape} {images.dtype}")
    H, W = images.shape[2:4]
    S = cfg.size
    faces = model.faces.long()
    face_np = faces.numpy()
    fid, bary = uv_texel_faces(model, S)
    chart = fid >= 0
    tex_face = face_np[fid[chart]]  # (P, 3) vertex ids of each chart texel's face
    tex_bary = bary[chart].astype(np.float64)  # (P, 3)
    P = tex_face.shape[0]

    def surface(vals: np.ndarray) -> np.ndarray:  # per-vertex (N, C) -> [texels; vertices] (P + N, C)
        return np.concatenate([(tex_bary[..., None] * vals[tex_face]).sum(1), vals])

    Rt = np.stack([c.R_world2cam for c in rig])
    tt = np.stack([c.t_world2cam for c in rig])
    Ks = np.stack([c.K for c in rig])
    centres = np.stack([c.center_world for c in rig])
    cams = rig.tensors(dtype=torch.float64)
    obs, seen = [], []
    kernel = np.ones((2 * cfg.edge_px + 1,) * 2, np.uint8)
    with torch.no_grad():
        out = model(
            torch.as_tensor(params.pose_rotvecs, dtype=torch.float32),
            torch.as_tensor(params.betas, dtype=torch.float32),
            torch.as_tensor(params.transl, dtype=torch.float32),
        )
        normals_all = vertex_normals(out.vertices, faces)
    for f in tqdm(range(F), desc="texture", unit="frame", disable=not progress):
        verts = out.vertices[f].double().numpy()
        X = surface(verts)  # (Q, 3) surface points
        n = surface(normals_all[f].double().numpy())
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        frags = rasterize(rig, out.vertices[f], faces)
        depth = frags.depth.numpy()
        inner = [cv2.erode(m.astype(np.uint8), kernel) > 0 for m in frags.mask.numpy()]
        Xt = torch.as_tensor(X)
        uv_d = cam_to_pixels(
            world_to_cam(Xt, cams["R_world2cam"], cams["t_world2cam"]), cams["K"], cams["dist"]
        ).numpy()
        for v in range(V):
            xc = X @ Rt[v].T + tt[v]
            z = xc[:, 2]
            zs = np.maximum(z, 1e-6)
            u = Ks[v, 0, 0] * xc[:, 0] / zs + Ks[v, 0, 2]
            w = Ks[v, 1, 1] * xc[:, 1] / zs + Ks[v, 1, 2]
            ui, wi = np.round(u).astype(np.int64), np.round(w).astype(np.int64)
            ok = (z > 0) & (ui >= 0) & (ui < W) & (wi >= 0) & (wi < H)
            uc, wc = np.clip(ui, 0, W - 1), np.clip(wi, 0, H - 1)
            ok &= inner[v][wc, uc]
            footprint = zs / Ks[v, 0, 0]  # metres per pixel at that depth
            ok &= z <= depth[v][wc, uc] + cfg.depth_tol_m + 2 * footprint
            ray = centres[v] - X
            cos = (n * ray).sum(1) / np.maximum(np.linalg.norm(ray, axis=1), 1e-12)
            ok &= cos >= cfg.min_cos
            if masks is not None:
                pm = cv2.erode((np.asarray(masks[f, v]) >= 0.5).astype(np.uint8), kernel) > 0
                ud = np.clip(np.round(uv_d[v]).astype(np.int64), 0, [W - 1, H - 1])
                ok &= pm[ud[:, 1], ud[:, 0]]
            col = np.zeros((X.shape[0], 3), np.uint8)
            col[ok] = np.clip(np.round(_bilinear(images[f, v], uv_d[v][ok])), 0, 255)
            obs.append(col)
            seen.append(ok)
    med, count = _median_observations(obs, seen)
    seen_pts = count > 0
    if not seen_pts[:P].any():
        raise RegisterError(
            "no texel was visible in any photo: the fitted body does not overlap the images (check the rig, the "
            "initial estimates and the frame selection)"
        )
    # fill unseen points from seen neighbours on the rest-pose surface (fitted shape)
    with torch.no_grad():
        rest = model.template_vertices(torch.as_tensor(params.betas[:1], dtype=torch.float32))[0].double().numpy()
    rest_pts = surface(rest)
    filled = np.empty_like(med)
    filled[:P] = _fill_from_seen(med[:P], seen_pts[:P], rest_pts[:P], cfg.fill_neighbours)
    if seen_pts[P:].any():
        filled[P:] = _fill_from_seen(med[P:], seen_pts[P:], rest_pts[P:], cfg.fill_neighbours)
    else:
        filled[P:] = filled[:P].mean(0)
    texture = np.zeros((S, S, 3), np.float32)
    texture[chart] = filled[:P]
    # gutter texels outside the charts: nearest chart texel (bilinear lookups at chart borders)
    near = ndimage.distance_transform_edt(~chart, return_distances=False, return_indices=True)
    texture = texture[near[0], near[1]]
    obs_map = np.zeros((S, S), np.int16)
    obs_map[chart] = count[:P]
    texel_seen = np.zeros((S, S), bool)
    texel_seen[chart] = seen_pts[:P]
    to_u8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    return BackProjection(
        texture=to_u8(texture),
        vertex_colors=to_u8(filled[P:]),
        texel_seen=texel_seen,
        texel_chart=chart,
        observations=obs_map,
        vertex_seen=seen_pts[P:],
    )


# ------------------------------------------------------------------------------------------
# the whole registration
# ------------------------------------------------------------------------------------------
def rest_pose_pve_mm(model: BodyModel, betas_a, betas_b) -> float:
    """Mean vertex distance (mm) between two shapes in the rest pose (T-pose), after aligning
    their root joints (the fit's translation absorbs a shift of the whole body)."""
    b = torch.as_tensor(np.stack([np.asarray(betas_a), np.asarray(betas_b)]), dtype=torch.float32)
    with torch.no_grad():
        v = model.template_vertices(b)
        j = model.rest_joints(b)[:, :1]
    v = v - j
    return float((v[0] - v[1]).norm(dim=-1).mean() * 1000)


def register_subject(
    session_path,
    name: str | None = None,
    cfg: RegisterConfig = RegisterConfig(),
    *,
    out: str | Path | None = None,
    write_session: bool = False,
    within: Sequence[int] | None = None,
    model: BodyModel | None = None,
    progress: bool = True,
) -> RegisterResult:
    """Register the person filmed in a session: fit the shape, build the appearance.

    Uses the session's frames, initial estimates (``write_init`` / ``mvcap init``) and, when
    present, person masks and 2D keypoints (``mvcap detect``). name: the subject's name
    (default: the session file's stem). out: subject file to write (``.npz``);
    write_session: also store the subject in the session (``Session.write_subject``);
    within: session frames to pick ``cfg.num_frames`` from (default: all usable frames;
    ignored when ``cfg.frames`` lists the frames explicitly).
    """
    t0 = time.perf_counter()
    session_path = Path(session_path)
    model = model or load_body_model()
    name = name or session_path.stem
    with Session.open(session_path) as s:
        rig_all = s.rig
        views = tuple(cfg.views) or rig_all.names
        unknown = [v for v in views if v not in rig_all.names]
        if unknown:
            raise RegisterError(f"views {unknown} are not in the session; its cameras are {list(rig_all.names)}")
        rig = rig_all.subset(views)
        vidx = [rig_all.index(v) for v in views]
        usable = s.frames_written & s.init_valid
        if s.has_detections:
            usable &= s.detections_written
        if within is not None:
            keep = np.zeros(s.num_frames, bool)
            idx = np.asarray(list(within), np.int64)
            keep[idx[(idx >= 0) & (idx < s.num_frames)]] = True
            usable &= keep
        if cfg.frames:
            frames = np.asarray(cfg.frames, np.int64)
            bad = [int(t) for t in frames if not (0 <= t < s.num_frames) or not usable[t]]
            if bad:
                raise RegisterError(
                    f"frames {bad} cannot be used: each frame needs its images, an initial estimate"
                    + (" and detections" if s.has_detections else "")
                    + f" (usable frames: {np.flatnonzero(usable)[:20].tolist()}...)"
                )
        else:
            frames = select_frames(usable, cfg.num_frames)
        if frames.size == 0:
            raise RegisterError(
                f"no usable frame in {session_path}: frames need their images and an initial body estimate "
                "(write_init, or `mvcap init`)" + (" and detections" if s.has_detections else "")
            )
        init = s.read_init(frames)
        # views of different sizes: on the rig's common canvas (see mvcap.render)
        canvas = canvas_size(rig)
        images = np.stack([pad_views(s.read_frame(int(t), views=list(views)), canvas) for t in frames])
        masks = None
        mk = [s.read_masks(int(t)) for t in frames]
        if all(m is not None for m in mk):
            masks = np.stack([pad_views([m[i] for i in vidx], canvas) for m in mk])
        keypoints = s.read_keypoints(frames)[:, vidx] if s.has_detections else None
        kp_format = s.keypoint_format
    if keypoints is not None and kp_format not in KEYPOINT_JOINTS:
        keypoints = None  # an unknown layout: register from the masks alone
    if cfg.init_betas == "zero":
        betas0 = np.zeros(init.betas.shape[1], np.float32)
    else:
        betas0 = np.nanmean(init.betas, 0)
        if not np.all(np.isfinite(betas0)):
            betas0 = np.zeros_like(betas0)
    with torch_threads(cfg.threads):
        if cfg.shape.enabled:
            shape = fit_shape(model, rig, init, masks, keypoints, kp_format, cfg.shape, betas0, progress)
        else:
            F, V = len(frames), len(views)
            shape = ShapeFit(
                betas0.astype(np.float32), init.pose_rotvecs, init.transl, np.full((F, V), np.nan, np.float32),
                np.full((F, V), np.nan, np.float32), 0, 0.0,
            )  # fmt: skip
        fitted = BodyParams(shape.pose_rotvecs, shape.betas, shape.transl)
        appearance = build_appearance(model, rig, images, fitted, masks, cfg.texture, progress)
    meta = {
        "source": "mvcap.register",
        "session": str(session_path),
        "frames": frames.tolist(),
        "views": list(views),
        "shape_from": "+".join(shape.cues) or "initial estimates (shape fit disabled)",
        "silhouette_iou_mean": float(np.nanmean(shape.silhouette_iou)) if masks is not None else None,
        "texture_coverage": appearance.coverage,
        "body_model": str(model.path),
        "config": dataclasses.asdict(cfg),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    meta = json.loads(json.dumps(meta))  # plain JSON types, so the subject equals its saved copy
    subject = Subject(
        name=name, betas=shape.betas, texture=appearance.texture, vertex_colors=appearance.vertex_colors, meta=meta
    )
    path = subject.save(out) if out is not None else None
    if write_session:
        with Session.open(session_path, mode="a") as s:
            s.write_subject(subject)
    return RegisterResult(
        subject=subject,
        frames=frames,
        views=views,
        shape=shape,
        appearance=appearance,
        path=path,
        seconds=time.perf_counter() - t0,
    )
