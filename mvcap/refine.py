"""The refinement loop: render -> predict displacements -> per-vertex targets -> fit.

Per frame, at most ``outer_iterations`` rounds (fewer once a round barely moves the body,
``round_stop_mm``, or barely improves its agreement with the detector, ``round_stop_gain``) of:

1. render the current body estimate in every view (undistorted pinhole images), textured
   with the subject's appearance, plus depth, normals and template coordinates;
2. predict a per-pixel displacement field render -> photo with the configured predictor;
3. splat it to the visible vertices (eq. 5) and add it to the vertices' current
   projections (eq. 6): per-vertex 2D targets with weights (visibility x confidence);
4. fit the body: jointly to all views (``fusion="joint"``) or per view followed by
   ReFit's rotation-averaging fusion (``fusion="refit"``).

Sequences run frame by frame (optionally initialised from the previous frame's result,
with a temporal term), writing each frame's result to the session file as soon as it is
done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import roma
import torch
from torch import Tensor

from mvcap.body import BodyModel, BodyOutput, BodyParams, load_body_model
from mvcap.cameras import Rig, project, projection_bounds, undistort_points
from mvcap.correspond import splat_to_vertices
from mvcap.cues import (
    BODY_PARTS,
    CueConfig,
    body_part_ids,
    contradicting_views,
    dead_views,
    depth_hold_term,
    field_check,
    guard_objections,
    keypoint_term,
    silhouette_distances,
    silhouette_term,
    skin_joints,
    view_trust,
)
from mvcap.devices import resolve_device
from mvcap.displace import (
    Displacement,
    DisplacementPredictor,
    FlowConfig,
    FlowPredictor,
    OraclePredictor,
    PredictRequest,
)
from mvcap.errors import MvcapError
from mvcap.evidence import (
    EvidenceConfig,
    ViewEvidence,
    evidence_cost,
    view_costs,
    view_evidence,
    weighted_cost,
)
from mvcap.fit import FitConfig, FitResult, Targets, fit_body
from mvcap.fuse import fuse_bodies
from mvcap.keypoints import keypoint_set
from mvcap.render import canvas_size, pad_views, render, undistort_images
from mvcap.subject import Subject
from mvcap.threads import torch_threads
from mvcap.triangulate import triangulate_keypoints

# what other modules use (cli, pipeline, bench, overlay, report, benchmarks/)
__all__ = [
    "ESTIMATE_PASSES",
    "RefineConfig",
    "FrameResult",
    "FrameInputs",
    "Appearance",
    "subject_appearance",
    "estimate_appearance",
    "estimate_request",
    "load_frame_inputs",
    "make_predictor",
    "resolve_predictor",
    "PredictorSchedule",
    "refine_frame",
    "frame_evidence",
    "FAILED_STATES",
    "RefineError",
    "refine_session",
    "FrameTask",
    "FrameOutcome",
    "RefineRun",
    "open_refine_run",
    "read_frame_task",
    "needs_previous",
    "refine_task",
    "record_outcome",
    "keypoint_targets",
    "keypoint_fit_frame",
    "write_frame_result",
]

log = logging.getLogger(__name__)


class RefineError(MvcapError):
    """A frame could not be refined (the message says why: out of view, diverged, ...)."""


PREDICTORS = ("oracle", "flow", "learned", "auto")
APPEARANCES = ("subject", "none", "wrong", "noise<std>", "brightness<std>")
_PERTURBED = re.compile(r"^(noise|brightness)(\d+(?:\.\d+)?)$")


def _check_appearance(mode: str) -> None:
    if mode not in APPEARANCES[:3] and not _PERTURBED.match(mode):
        raise ValueError(f"appearance must be one of {APPEARANCES} (std in 8-bit levels, e.g. 'noise10'), got {mode!r}")


@dataclass(frozen=True)
class RefineConfig:
    """The refinement pipeline (``configs/refine.toml``)."""

    # auto | oracle | flow | learned, or a per-round schedule "learned,flow" (round 1 learned,
    # then flow: the last one repeats); a round the guard rejects hands over to the next
    # predictor. auto: learned where the subject carries a network adapted to it, else flow
    # (resolve_predictor)
    predictor: str = "auto"
    fusion: str = "joint"  # joint | refit
    outer_iterations: int = 6  # at most this many rounds
    # a frame's rounds end early once a round moves its body less than this (mean vertex
    # displacement, mm): it has settled, and more rounds cost time; 0 = always run them all
    round_stop_mm: float = 1.0
    # ... or, with the detector's evidence (cues.guard), once a kept round improved the body's
    # agreement with the keypoints and masks (the guard's cost) by less than this fraction:
    # later rounds then follow the predictor's noise more than the person; 0 = off
    round_stop_gain: float = 0.01
    views: tuple[str, ...] = ()  # cameras to use; empty = all (one name = single-view fallback)
    min_visible_vertices: int = 30  # fewer visible vertices: the view is skipped
    translation_fusion: str = "ray"  # refit mode: "ray" (depth-aware) or "mean"
    init: str = "session"  # per-frame init: "session" (stored estimates) or "previous" result
    # learned predictor weights: a file or a shipped network's name ("lite_flowprior": the
    # network that corrects flow; "lite": the plain one); empty = the subject's adapted network
    # (`mvcap adapt`) when it has one and `adapted` is on, else the shipped lite_flowprior
    learned_weights: str = ""
    adapted: bool = True
    # a network with a confidence head (`mvcap adapt --set confidence=true`) weights each
    # pixel's target by min(1, (this / its expected error, in pixels of the rendered window)^2)
    learned_confidence_px: float = 2.0
    # coarse to fine: after the whole-body pass, the network runs again on the residual with
    # a crop pixel of at most this many image pixels (0 = whole-body pass only), on crops of
    # at most learned_max_crop pixels (see mvcap.nets.predictor)
    learned_fine_px: float = 0.0
    learned_max_crop: int = 192
    # how the estimate is textured for the predictor: "subject" (its registered appearance);
    # the rest are ablations (the refinement paper's Table 3): "none" (uniform grey), "wrong"
    # (another person's texture), "noise<std>" (per-texel Gaussian noise) or "brightness<std>"
    # (one random brightness shift per subject), std in 8-bit levels, e.g. "noise30"
    appearance: str = "subject"
    threads: int = 1  # torch threads for the fit; 0 = torch's default. The fit's tensors are
    # small: more threads barely help and spin-wait badly when the cores are shared.
    # render the estimate only in a window around the body in each view, at most this many
    # pixels on its longer side: -1 = the predictor's choice (the learned network: 4x its crop
    # size; flow: native), 0 = native resolution; render_window = false: the whole image
    render_window: bool = True
    render_max_side: int = -1
    # independent frames (init="session", no temporal term) refined together, each with its
    # own rounds and solver, their fits batched (see refine_frames); 1 = one at a time
    frame_batch: int = 8
    # where the loop runs: "cpu", "cuda" / "cuda:N" (render, render passes, the learned
    # network's crops, the splat and the fit stay on the GPU), or "auto" (CUDA when present)
    device: str = "cpu"
    fit: FitConfig = field(default_factory=FitConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    cues: CueConfig = field(default_factory=CueConfig)  # keypoints, silhouettes, view trust, guard

    def __post_init__(self):
        if not self.predictor or any(p not in PREDICTORS for p in self.predictor.split(",")):
            raise ValueError(
                f"predictor must be one of {PREDICTORS} or a per-round schedule of them joined by commas "
                f"(e.g. 'learned,flow'), got {self.predictor!r}"
            )
        if "," in self.predictor and {"oracle", "auto"} & set(self.predictor.split(",")):
            raise ValueError("the oracle and auto predictors run alone, not in a schedule")
        if self.fusion not in ("joint", "refit"):
            raise ValueError(f"fusion must be 'joint' or 'refit', got {self.fusion!r}")
        if self.init not in ("session", "previous"):
            raise ValueError(f"init must be 'session' or 'previous', got {self.init!r}")
        _check_appearance(self.appearance)
        if self.outer_iterations < 1:
            raise ValueError(f"outer_iterations must be >= 1, got {self.outer_iterations}")
        if not self.round_stop_mm >= 0 or not 0 <= self.round_stop_gain < 1:
            raise ValueError(
                f"round_stop_mm must be >= 0 (mm) and round_stop_gain in [0, 1) (a fraction of the evidence cost; "
                f"0 = off), got {self.round_stop_mm} and {self.round_stop_gain}"
            )
        if self.render_max_side < -1:
            raise ValueError(
                f"render_max_side must be -1 (the predictor's), 0 (native) or a size, got {self.render_max_side}"
            )
        if self.frame_batch < 1:
            raise ValueError(f"frame_batch must be >= 1 (1 = frames one at a time), got {self.frame_batch}")
        if not self.learned_confidence_px > 0:
            raise ValueError(f"learned_confidence_px must be > 0 (pixels), got {self.learned_confidence_px}")
        if not self.learned_fine_px >= 0:
            raise ValueError(f"learned_fine_px must be >= 0 (image pixels; 0 = off), got {self.learned_fine_px}")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        if self.learned_max_crop < 16:
            raise ValueError(f"learned_max_crop must be >= 16 (crop pixels), got {self.learned_max_crop}")


#: FrameResult.status: "done" (refined), "kept" (no round agreed better with the evidence
#: than the estimate it started from: that estimate is the result), or a failure: "out of
#: view" (no camera sees enough of the body), "diverged" (the fit left finite numbers),
#: "contradictory evidence" (in most cameras no body is near the detector's keypoints and mask).
FAILED_STATES = ("out of view", "diverged", "contradictory evidence")


@dataclass(frozen=True)
class FrameResult:
    """One refined frame: pose_rotvecs (24, 3), betas (K,), transl (3,), residual_px (V,)
    mean distance of the fitted vertices to their targets per view (NaN for skipped views),
    fit iterations summed over outer iterations, wall seconds, skipped view names; status
    (see :data:`FAILED_STATES`), notes (what the guard and the trust did, in words),
    view_weights (V,) the trust each view got, dead_views (names of cameras with no picture),
    evidence_cost (start, end) of the body against the detector's evidence (NaN without),
    rounds: the render -> predict -> fit rounds run (a rejected one included; 0: not a
    dense refinement)."""

    pose_rotvecs: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    residual_px: np.ndarray
    iterations: int
    seconds: float
    skipped_views: tuple[str, ...] = ()
    status: str = "done"
    notes: tuple[str, ...] = ()
    view_weights: np.ndarray | None = None
    dead_views: tuple[str, ...] = ()
    evidence_cost: tuple[float, float] = (float("nan"), float("nan"))
    rounds: int = 0

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATES


ESTIMATE_PASSES = ("rgb", "depth", "normal", "template", "mask")  # what predictors see of the estimate


@dataclass(frozen=True)
class Appearance:
    """How a body estimate is coloured when rendered: a UV texture (Ht, Wt, 3) uint8 with the
    body model's uvs (T, 2) and uv_faces (F, 3), or vertex_colors (N, 3) uint8, or neither
    (uniform grey). See :func:`mvcap.render.render`."""

    texture: Tensor | None = None
    uvs: Tensor | None = None
    uv_faces: Tensor | None = None
    vertex_colors: Tensor | None = None

    @property
    def textured(self) -> bool:
        """False for the uniform grey body."""
        return self.texture is not None or self.vertex_colors is not None

    def render_kwargs(self) -> dict:
        """Keyword arguments for :func:`mvcap.render.render` (empty for grey)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to(self, device) -> Appearance:
        """The same appearance with its tensors on ``device``."""
        return replace(self, **{k: torch.as_tensor(v).to(device) for k, v in self.render_kwargs().items()})


def subject_appearance(model: BodyModel, subject: Subject | None) -> Appearance:
    """The subject's appearance: its UV texture (if the body model has UVs), else its vertex
    colours, else uniform grey."""
    if subject is not None and subject.texture is not None and model.uvs is not None:
        return Appearance(texture=torch.from_numpy(np.array(subject.texture)), uvs=model.uvs, uv_faces=model.uv_faces)
    if subject is not None and subject.vertex_colors is not None:
        return Appearance(vertex_colors=torch.from_numpy(np.array(subject.vertex_colors)))
    return Appearance()


def estimate_appearance(model: BodyModel, subject: Subject | None, mode: str = "subject") -> Appearance:
    """The estimate's appearance under ``mode`` (see :attr:`RefineConfig.appearance`).

    "wrong" (another person's texture) is not made here: the benchmark supplies it
    (:func:`mvcap.bench.method_appearance`) and passes it to :func:`refine_session`."""
    if mode == "none":
        return Appearance()
    if mode == "wrong":
        raise ValueError(
            "appearance 'wrong' (another person's texture) is an ablation the benchmark supplies: run it as "
            "`mvcap bench` method '...+wrongtexture', or pass appearance= to refine_session"
        )
    _check_appearance(mode)
    m = _PERTURBED.match(mode)
    if m is None or subject is None or (subject.texture is None and subject.vertex_colors is None):
        return subject_appearance(model, subject)
    kind, std = m.group(1), float(m.group(2)) / 255.0
    # seeded by the subject and the mode: the same perturbation on every frame and every run
    rng = np.random.default_rng(zlib.crc32(f"{subject.name}/{mode}".encode()))
    shift = rng.normal(0, std) if kind == "brightness" else 0.0

    def perturb(colors):
        if colors is None:
            return None
        c = np.asarray(colors, np.float32) / 255.0 + shift
        if kind == "noise":
            c = c + rng.normal(0, std, c.shape)
        return np.round(np.clip(c, 0.0, 1.0) * 255).astype(np.uint8)

    perturbed = replace(subject, texture=perturb(subject.texture), vertex_colors=perturb(subject.vertex_colors))
    return subject_appearance(model, perturbed)


@dataclass(frozen=True)
class ViewWindows:
    """Per view, the box of the image the estimate is rendered in and the size it is rendered
    at (:func:`view_windows`): boxes (V, 4) int x0, y0, w, h image pixels; sizes (V, 2) int
    (width, height) of the render."""

    boxes: np.ndarray
    sizes: np.ndarray

    @property
    def image_px(self) -> np.ndarray:
        """(V,) image pixels per rendered pixel (1 where a window is rendered at its own size)."""
        return self.boxes[:, 2] / self.sizes[:, 0]

    def rig(self, pinhole: Rig) -> Rig:
        """The cameras that see only their window (see :meth:`Rig.cropped`)."""
        return pinhole.cropped(self.boxes, self.sizes)

    def to_image(self, uv: Tensor) -> Tensor:
        """(V, N, 2) window pixels -> image pixels."""
        box = torch.as_tensor(self.boxes, dtype=uv.dtype, device=uv.device)
        scale = torch.as_tensor(self.sizes, dtype=uv.dtype, device=uv.device) / box[:, 2:]
        return (uv + 0.5) / scale[:, None] + box[:, None, :2] - 0.5

    def crop(self, photos):
        """Photos (V, H, W, 3) uint8 -> each view's window at its render size, on a common
        canvas (top-left, zeros beyond). A tensor is cropped on its device."""
        if isinstance(photos, Tensor):
            return self._crop_tensor(photos)
        import cv2

        out = []
        for photo, (x0, y0, w, h), (W, H) in zip(photos, self.boxes, self.sizes):
            part = photo[y0 : y0 + h, x0 : x0 + w]
            out.append(part if (W, H) == (w, h) else cv2.resize(part, (int(W), int(H)), interpolation=cv2.INTER_AREA))
        return pad_views(out)

    def _crop_tensor(self, photos: Tensor) -> Tensor:
        from mvcap.nets.displacement import resize_tensor

        Wc, Hc = (int(x) for x in self.sizes.max(0))
        out = photos.new_zeros((len(self.boxes), Hc, Wc, photos.shape[-1]))
        for v, ((x0, y0, w, h), (W, H)) in enumerate(zip(self.boxes, self.sizes)):
            part = photos[v, y0 : y0 + h, x0 : x0 + w]
            if (W, H) != (w, h):  # OpenCV's area resize of uint8, rounded back
                part = resize_tensor(part, (int(W), int(H))).round().clamp(0, 255).to(photos.dtype)
            out[v, : int(H), : int(W)] = part
        return out


def view_windows(rig: Rig, vertices_world: Tensor, max_side: int = 0, margin: float = 0.15,
                 margin_px: int = 48) -> ViewWindows:  # fmt: skip
    """Where to render the estimate in each view: the square around the body's projection (the
    learned network's crop is one), grown by ``margin`` of its side plus ``margin_px`` (room
    for the displacements) and kept inside the image, rendered at the box's own resolution
    or, with ``max_side`` > 0, scaled down so its longer side is at most that. A view that
    sees none of the body keeps its whole image. Boxes are then grown (inside their images)
    to one render size for all views. Rendering costs follow the person's size in the image,
    not the image's."""
    bounds = projection_bounds(rig, vertices_world)[:, :4]
    boxes, scales = [], []
    for cam, bound in zip(rig, bounds):
        W, H = cam.width, cam.height
        box = (0, 0, W, H)
        if np.isfinite(bound).all():
            lo, hi = bound[:2], bound[2:]
            # square around the body: the learned network crops a square around the silhouette
            side = float((hi - lo).max())
            centre = (lo + hi) / 2
            lo, hi = centre - side / 2, centre + side / 2
            grow = margin * side + margin_px
            x0, y0 = (max(0, int(np.floor(a - grow))) for a in lo)
            x1, y1 = min(W, int(np.ceil(hi[0] + grow)) + 1), min(H, int(np.ceil(hi[1] + grow)) + 1)
            if x1 > x0 and y1 > y0:
                box = (x0, y0, x1 - x0, y1 - y0)
        w, h = box[2:]
        boxes.append(box)
        scales.append(min(1.0, max_side / max(w, h)) if max_side > 0 else 1.0)
    # one render size for all views where the images allow it (grown boxes, still inside the
    # image): the rasterizer renders views of one size together
    Wc = max(max(1, round(b[2] * s)) for b, s in zip(boxes, scales))
    Hc = max(max(1, round(b[3] * s)) for b, s in zip(boxes, scales))
    sizes = []
    for v, (cam, (x0, y0, w, h), s) in enumerate(zip(rig, boxes, scales)):
        bw, bh = round(Wc / s), round(Hc / s)
        if bw <= cam.width and bh <= cam.height:
            x0 = min(max(0, x0 - (bw - w) // 2), cam.width - bw)
            y0 = min(max(0, y0 - (bh - h) // 2), cam.height - bh)
            boxes[v], size = (x0, y0, bw, bh), (Wc, Hc)
        else:
            size = (max(1, round(w * s)), max(1, round(h * s)))
        sizes.append(size)
    return ViewWindows(np.array(boxes, np.int64), np.array(sizes, np.int64))


def estimate_request(
    model: BodyModel,
    pinhole: Rig,
    photos: np.ndarray,
    vertices_world: Tensor,
    appearance: Appearance = Appearance(),
    template=None,
    windows: ViewWindows | None = None,
) -> PredictRequest:
    """Render what predictors see of the estimate (``ESTIMATE_PASSES`` with ``appearance``, see
    :func:`estimate_appearance`) and pair it with the undistorted photos (V, H, W, 3).
    vertices_world (N, 3); template (N, 3) rest-pose vertices (default: the mean shape's).
    windows: render only these windows of the views (:func:`view_windows`): the request's rig
    and photos are then the windows' (predictions in window pixels; see
    :meth:`ViewWindows.to_image`). Photos as a tensor: everything stays on its device."""
    template = model.template_vertices()[0] if template is None else template
    if windows is not None:
        pinhole, photos = windows.rig(pinhole), windows.crop(photos)
    fragments, passes = render(
        pinhole,
        vertices_world,
        model.faces,
        template_vertices=template,
        passes=ESTIMATE_PASSES,
        **appearance.render_kwargs(),
    )
    image_px = None if windows is None else windows.image_px
    return PredictRequest(photos, passes, fragments, pinhole, vertices_world, model.faces, image_px)


@dataclass(frozen=True)
class FrameInputs:
    """What refining (or drawing) one frame needs: rig, the V chosen cameras (with their
    distortion); photos (V, H, W, 3) uint8 undistorted into the pinhole image space; init,
    the frame's initial estimate (1 frame; betas: the registered subject's shape when the
    session has one, else the estimate's; NaN when the frame has none)."""

    rig: Rig
    photos: np.ndarray
    init: BodyParams

    @property
    def has_init(self) -> bool:
        return bool(np.isfinite(self.init.pose_rotvecs).all() and np.isfinite(self.init.transl).all())


def load_frame_inputs(session, t: int, views: Sequence[str] | None = None) -> FrameInputs:
    """Read frame ``t`` of an open :class:`mvcap.capture.Session` for the cameras ``views``
    (None or empty: all): the rig, the undistorted photos and the initial estimate."""
    rig = session.rig if not views else session.rig.subset(list(views))
    # cameras of different sizes: the photos on the rig's common canvas (mvcap.render.pad_views)
    photos = undistort_images(rig, pad_views(session.read_frame(int(t), views=list(rig.names)), canvas_size(rig)))
    init = session.read_init([int(t)], require_valid=False)
    betas = session.subject_betas  # not the whole subject: its texture and network are large
    if betas is not None:
        init = BodyParams(init.pose_rotvecs, betas, init.transl)
    return FrameInputs(rig, photos, init)


def write_frame_result(writer, t: int, res: FrameResult, num_views: int, view_idx: list[int]) -> None:
    """Store one frame's result; residuals of views the run did not use stay NaN."""
    residual = np.full(num_views, np.nan, np.float32)
    residual[view_idx] = res.residual_px
    writer.write(
        t, res.pose_rotvecs, res.betas, res.transl, residual_px=residual, iterations=res.iterations, seconds=res.seconds
    )


def _vertex_targets(
    rig: Rig, vertices: Tensor, flow: Tensor, confidence: Tensor, fragments, faces: Tensor, min_visible: int
) -> tuple[Tensor, Tensor, list[int]]:
    """Per-vertex targets (V, N, 2) and weights (V, N) from per-pixel fields (eq. 5-6)."""
    N = vertices.shape[0]
    per_pixel = torch.cat([flow * confidence[..., None], confidence[..., None]], dim=-1)
    splat, bary_weight = splat_to_vertices(per_pixel, fragments, faces, N)  # (V,N,3), (V,N)
    conf_sum = splat[..., 2]  # sum b*c / sum b
    disp = splat[..., :2] / conf_sum.clamp_min(1e-6)[..., None]
    weight = torch.where(bary_weight > 0, conf_sum, torch.zeros_like(conf_sum))
    uv_now = project(rig, vertices.detach().to(torch.float32), distort=False)  # (V, N, 2)
    seen = (weight > 1e-3).sum(-1).tolist()  # one read-back for all views
    skipped = [v for v in range(len(rig)) if seen[v] < min_visible]
    weight[skipped] = 0
    return uv_now + disp, weight, skipped


def _joint_visibility_weights(model: BodyModel, weight: Tensor) -> Tensor:
    """How much of each joint's skin a view saw: (V, N) vertex weights -> (V, 24)."""
    return weight @ model.weights.to(weight.dtype)


def frame_evidence(session, t: int, rig: Rig, cfg: CueConfig = CueConfig()) -> list[ViewEvidence | None] | None:
    """The detector's evidence of frame ``t`` for the cameras of ``rig`` (keypoints, masks
    undistorted to the pinhole image), or None when the session has no detections for it.
    With ``cfg.undo_swaps`` the keypoints are those of a triangulation over the rig's cameras,
    left/right swaps undone (:func:`mvcap.triangulate.triangulate_keypoints`)."""
    if not session.has_detections or not session.detections_written[int(t)]:
        return None
    names = list(session.view_names)
    idx = [names.index(name) for name in rig.names]
    kp = session.read_keypoints([int(t)])[0][idx]
    if cfg.undo_swaps and len(rig) >= 2:
        kset = keypoint_set(session.keypoint_format)
        tri = triangulate_keypoints(rig, kp[None], flip_index=kset.flip_index, names=kset.names)
        kp = tri.keypoints[0].astype(np.float32)
    masks = session.read_masks(int(t))
    ecfg = EvidenceConfig(min_keypoint_confidence=cfg.min_keypoint_confidence)
    return [
        view_evidence(rig.subset([name]), kp[i], None if masks is None else masks[v], None, ecfg)
        for i, (name, v) in enumerate(zip(rig.names, idx, strict=True))
    ]


def _target_residual(pinhole: Rig, vertices_world: Tensor, uv_target: Tensor, weight: Tensor) -> Tensor:
    """(V,) weighted mean distance (px) of a kept estimate from a round's targets (NaN: none)."""
    with torch.no_grad():
        d = (project(pinhole, vertices_world, distort=False) - uv_target).norm(dim=-1)
        residual = (weight * d).sum(-1) / weight.sum(-1).clamp_min(1e-6)
        return torch.where(weight.sum(-1) > 0, residual, torch.full_like(residual, float("nan")))


def _field_checker(model: BodyModel, rig: Rig, evidence, definition, cues: CueConfig):
    """The field check of ``cues`` (:func:`mvcap.cues.field_check`) for one frame, or None when
    it is off: ``check(pinhole, vertices_world, joints_world, uv_target, weight)`` zeroes, in
    place, the weights of the (view, body part) pairs whose targets move the part's landmarks
    away from the keypoints, and returns them as (view, part name) pairs."""
    if not cues.field_check or definition is None:
        return None
    vertex_part, landmark_part = body_part_ids(model, definition)
    skin_joint = skin_joints(model)
    K = len(definition.names)
    kp_uv = np.full((len(rig), K, 3), np.nan)
    heights = np.full(len(rig), np.nan)
    for v, ev in enumerate(evidence):
        if ev is None:
            continue
        k = np.asarray(ev.keypoints, np.float64)
        usable = (k[:, 2] >= cues.min_keypoint_confidence) & np.isfinite(k[:, :2]).all(1)
        one = rig.subset([rig.names[v]])
        kp_uv[v, :, :2] = undistort_points(one, torch.as_tensor(np.nan_to_num(k[None, :, :2])))[0].numpy()
        kp_uv[v, :, 2] = usable
        heights[v] = ev.height_px
    if not np.isfinite(heights).any():
        return None
    part_names = list(BODY_PARTS)
    vertex_part_t = torch.as_tensor(vertex_part, device=model.v_template.device)

    def check(pinhole: Rig, vertices_world: Tensor, joints_world: Tensor, uv_target: Tensor, weight: Tensor):
        with torch.no_grad():
            uv_now = project(pinhole, vertices_world, distort=False)
            joints_uv = project(pinhole, joints_world, distort=False)
        bad = field_check(definition, uv_now, joints_uv, uv_target, weight, kp_uv, heights, landmark_part,
                          skin_joint, cues.field_tolerance)  # fmt: skip
        for v, p in bad:
            weight[v, vertex_part_t == p] = 0.0
        return [(v, part_names[p]) for v, p in bad]

    return check


@dataclass(frozen=True)
class _FitRequest:
    """One fit a frame's refinement asks for (see :func:`_refine_steps`): the arguments of
    :func:`~mvcap.fit.fit_body` that differ between frames."""

    current: BodyParams
    targets: Targets
    prev: Tensor | None
    extra: tuple
    independent_views: bool


def _fit(model: BodyModel, pinhole: Rig, cfg: RefineConfig, req: _FitRequest) -> FitResult:
    # re-assert torch's thread count here: numba's OpenMP layer (the renderer) resets
    # the process-wide OpenMP setting that torch reads
    with torch_threads(cfg.threads):
        return fit_body(model, pinhole, req.current, req.targets, cfg.fit, req.prev,
                        independent_views=req.independent_views, extra_terms=req.extra)  # fmt: skip


def _frame_rows(terms: Sequence, b: int) -> Callable:
    """Frame b's data terms (each ``posed -> (1,)``) as a term on row b of a batch's body."""

    def term(posed) -> Tensor:
        row = BodyOutput(posed.vertices[b : b + 1], posed.joints[b : b + 1], posed.rotmats_world[b : b + 1])
        return sum(t(row) for t in terms).reshape(1)

    return term


def _fit_frames(model: BodyModel, pinhole: Rig, cfg: RefineConfig, reqs: list[_FitRequest]) -> list[FitResult]:
    """The joint fits of several independent frames (no temporal term) as one batched fit in
    which each frame keeps its own solver (``fit_body(independent_frames=True)``); returns one
    result per frame, as :func:`_fit` would (up to floating-point rounding)."""
    n = len(reqs)
    keys = ("pose_rotvecs", "betas", "transl")
    current = BodyParams(*(torch.cat([torch.as_tensor(getattr(r.current, k)) for r in reqs]) for k in keys))
    targets = Targets(torch.cat([r.targets.uv for r in reqs]), torch.cat([r.targets.weight for r in reqs]),
                      points="vertices", distorted=False)  # fmt: skip
    extra = []
    if any(r.extra for r in reqs):
        rows = [_frame_rows(r.extra, b) if r.extra else None for b, r in enumerate(reqs)]

        def per_frame(posed) -> Tensor:
            zero = posed.vertices.new_zeros(1)
            return torch.cat([zero if row is None else row(posed) for row in rows])

        extra = [per_frame]
    with torch_threads(cfg.threads):
        res = fit_body(model, pinhole, current, targets, cfg.fit, None, extra_terms=extra, independent_frames=True)
    return [
        FitResult(
            res.pose_rotvecs[b : b + 1],
            res.betas[b : b + 1],
            res.transl[b : b + 1],
            res.loss[b : b + 1],
            res.residual_px[b : b + 1],
            res.frame_iterations[b],
            res.seconds / n,
            res.evaluations,
        )
        for b in range(n)
    ]


def refine_frame(
    model: BodyModel,
    rig: Rig,
    photos: np.ndarray,
    init: BodyParams,
    predictor: DisplacementPredictor,
    cfg: RefineConfig = RefineConfig(),
    appearance: Appearance = Appearance(),
    prev_pose_rotvecs: Tensor | None = None,
    evidence: list[ViewEvidence | None] | None = None,
    definition=None,
) -> FrameResult:
    """Refine one frame (arguments: see :func:`_refine_steps`)."""
    steps = _refine_steps(model, rig, photos, init, predictor, cfg, appearance, prev_pose_rotvecs, evidence, definition)
    pinhole = rig.without_distortion()
    try:
        req = next(steps)
        while True:
            req = steps.send(_fit(model, pinhole, cfg, req))
    except StopIteration as done:
        return done.value


@dataclass(frozen=True)
class FrameInput:
    """One frame for :func:`refine_frames`: photos (V, H, W, 3) uint8 (undistorted), its
    initial estimate (1 frame) and the detector's evidence (None without detections)."""

    photos: np.ndarray
    init: BodyParams
    evidence: list[ViewEvidence | None] | None = None


def refine_frames(
    model: BodyModel,
    rig: Rig,
    frames: Sequence[FrameInput],
    predictor: DisplacementPredictor,
    cfg: RefineConfig = RefineConfig(),
    appearance: Appearance = Appearance(),
    definition=None,
) -> list[FrameResult | Exception]:
    """Refine independent frames together (no temporal term, each from its own estimate).

    Each frame goes through exactly the steps of :func:`refine_frame` (its rounds, guard and
    solver are its own); what is shared is the fit's arithmetic: the frames' joint fits of one
    round run as one batched fit, which on a CPU costs a fraction of the fits one by one (the
    fit's small tensor operations are bound by per-operation overhead). Results equal
    :func:`refine_frame`'s up to floating-point rounding. Returns per frame its
    :class:`FrameResult`, or the exception that frame raised (the others go on).
    """
    pinhole = rig.without_distortion()
    steps = [_refine_steps(model, rig, f.photos, f.init, predictor, cfg, appearance, None, f.evidence, definition)
             for f in frames]  # fmt: skip
    out: list = [None] * len(steps)
    pending: dict[int, _FitRequest] = {}

    def advance(i: int, value=None, exc: Exception | None = None) -> None:  # run frame i to its next fit
        try:
            pending[i] = steps[i].send(value) if exc is None else steps[i].throw(exc)
        except StopIteration as done:
            out[i] = done.value
        except Exception as err:  # one bad frame must not end the others
            out[i] = err

    for i in range(len(steps)):
        advance(i)
    while pending:
        reqs, pending = pending, {}
        together = [i for i, r in reqs.items() if not r.independent_views and r.prev is None]
        results: dict[int, FitResult] = {}
        if len(together) > 1:
            try:
                results = dict(zip(together, _fit_frames(model, pinhole, cfg, [reqs[i] for i in together])))
            except Exception as err:  # fit them one by one below, so an error lands on its own frame
                log.warning("the batched fit of %d frames failed (%s: %s); fitting them one by one",
                            len(together), type(err).__name__, err)  # fmt: skip
                results = {}
        for i, req in reqs.items():
            if i not in results:
                try:
                    results[i] = _fit(model, pinhole, cfg, req)
                except Exception as err:
                    advance(i, exc=err)
                    continue
            advance(i, results[i])
    return out


def _refine_steps(
    model: BodyModel,
    rig: Rig,
    photos: np.ndarray,
    init: BodyParams,
    predictor: DisplacementPredictor,
    cfg: RefineConfig = RefineConfig(),
    appearance: Appearance = Appearance(),
    prev_pose_rotvecs: Tensor | None = None,
    evidence: list[ViewEvidence | None] | None = None,
    definition=None,
):
    """Refine one frame, as a coroutine: it yields each :class:`_FitRequest` and is sent the
    fit's :class:`~mvcap.fit.FitResult`; it returns the :class:`FrameResult`. Driven by
    :func:`refine_frame` (one frame) and :func:`refine_frames` (fits batched across frames).

    rig: the (possibly restricted) rig; photos: (V, H, W, 3) uint8 already undistorted into
    the pinhole image space (see :func:`mvcap.render.undistort_images`); as a tensor, or with
    the body model off the CPU, the loop keeps every image on the model's device (the
    device-resident path, :mod:`mvcap.devices`); init: the frame's
    initial estimate (one frame, world frame; its betas are held); appearance: how the
    estimate is rendered for the predictor (:func:`estimate_appearance`); prev_pose_rotvecs
    (24, 3): the previous frame's result for the temporal term; evidence: per view, an
    independent detector's keypoints and mask (:func:`frame_evidence`), with ``definition``
    its landmarks on our mesh: then the fit also pulls to keypoints and silhouettes, views
    are trusted by their agreement, and a round's update is kept only when it agrees better
    with that evidence than the estimate before it (``cfg.cues``).
    """
    # this frame's own seconds: its work between fits plus its share of each (batched) fit
    clock = {"spent": 0.0, "since": time.perf_counter()}

    def fit(req: _FitRequest):
        clock["spent"] += time.perf_counter() - clock["since"]
        res = yield req
        clock["spent"] += res.seconds
        clock["since"] = time.perf_counter()
        return res

    if len(init) != 1:
        raise ValueError(f"refine_frame refines one frame; init has {len(init)} (slice it: init[t])")
    pinhole = rig.without_distortion()
    faces = model.faces
    # the loop runs where the body model is; photos given as a tensor, or a model off the
    # CPU, keep every image (photos, render, crops, fields) there too
    dev = model.v_template.device
    if isinstance(photos, Tensor) or dev.type != "cpu":
        photos = torch.as_tensor(photos, device=dev)
        appearance = appearance.to(dev)  # refine_session moves it once per run
    start = init.to_torch(device=dev)
    pose, betas, transl = start["pose_rotvecs"][0], start["betas"][0], start["transl"][0]
    template = model.template_vertices()[0]
    with torch.no_grad():
        joints_init = model(pose[None], betas[None], transl[None]).joints[0]
    iterations = 0
    residual = torch.full((len(rig),), float("nan"), device=dev)
    skipped_all: set[int] = set()
    view_dirs = torch.as_tensor(np.stack([c.R_world2cam[2] for c in rig]), dtype=torch.float32, device=dev)
    cues = cfg.cues
    notes: list[str] = []
    status = "done"
    dead = dead_views(photos)
    trust = np.ones(len(rig))
    trust[dead] = 0.0
    if dead:
        notes.append(f"camera(s) {', '.join(rig.names[v] for v in dead)} show no picture (dead or black): ignored")
    if evidence is not None and (definition is None or len(evidence) != len(rig)):
        raise ValueError("evidence needs one entry per camera of the rig and the detector's landmark definition")
    cost_start = cost_cur = float("nan")
    if evidence is not None:
        evidence = [None if v in dead else ev for v, ev in enumerate(evidence)]
        cost_cur, cur_views = evidence_cost(model, definition, rig, pose, betas, transl, evidence)
        cost_start = cost_cur
        if cues.trust:
            trust = np.minimum(trust, view_trust(view_costs(cur_views), cues.trust_ratio))

    checker = _field_checker(model, rig, evidence, definition, cues) if evidence is not None else None
    mask_distances = None
    rounds, posed = 0, None
    for r in range(cfg.outer_iterations):
        rounds = r + 1
        if posed is None:  # the last round's settling test may have posed the body already
            with torch.no_grad():
                posed = model(pose[None], betas[None], transl[None])
        vertices_world = posed.vertices[0]
        round_predictor = _round_predictor(predictor, r)
        windows = None
        if cfg.render_window:
            side = cfg.render_max_side
            side = getattr(round_predictor, "render_max_side", 0) if side < 0 else side
            windows = view_windows(pinhole, vertices_world, side)
        req = estimate_request(model, pinhole, photos, vertices_world, appearance, template, windows)
        disp = round_predictor(req)
        uv_target, weight, skipped = _vertex_targets(
            req.rig, vertices_world, disp.flow, disp.confidence, req.fragments, faces, cfg.min_visible_vertices
        )
        if windows is not None:
            uv_target = windows.to_image(uv_target)
        weight = weight * torch.as_tensor(trust, dtype=weight.dtype, device=dev)[:, None]
        all_weight = weight.clone() if checker is not None else weight  # before the field check drops any
        if checker is not None:
            dropped = checker(pinhole, vertices_world, posed.joints[0], uv_target, weight)
            if dropped:
                parts = ", ".join(f"{p} in {rig.names[v]}" for v, p in dropped)
                notes.append(f"round {r + 1}: dense targets dropped where they move the body away from the "
                             f"detector's keypoints ({parts})")  # fmt: skip
            if float(all_weight.sum()) > 0 and float(weight.sum()) <= 0:  # the field disagrees everywhere
                notes.append(f"round {r + 1}: no dense target agrees with the detector's keypoints; estimate kept")
                if r == 0:
                    status = "kept"
                    residual = _target_residual(pinhole, vertices_world, uv_target, all_weight)
                skipped_all.update(skipped)
                if _hands_over(predictor, r, cfg.outer_iterations):
                    continue
                break
        skipped_all.update(skipped)
        if len(skipped) == len(rig) or float(weight.sum()) <= 0:
            status = "out of view"
            notes.append("no camera sees enough of the body")
            break
        targets = Targets(uv_target[None], weight[None], points="vertices", distorted=False)
        prev = prev_pose_rotvecs[None].to(dev, torch.float32) if prev_pose_rotvecs is not None else None
        current = BodyParams(pose[None], betas[None], transl[None])
        extra = []
        if evidence is not None:
            heights = np.array([np.nan if ev is None else ev.height_px for ev in evidence])
            kp = np.stack([ev.keypoints if ev is not None else _no_keypoints(definition) for ev in evidence])
            masks = [None if ev is None else ev.mask for ev in evidence]
            if mask_distances is None and cues.w_silhouette > 0 and any(m is not None for m in masks):
                mask_distances = silhouette_distances(pinhole, masks, dev)  # once per frame
            extra = [
                term
                for term in (
                    keypoint_term(definition, rig, kp, heights, cues, trust, dev),
                    silhouette_term(pinhole, masks, heights, model.num_vertices, cues, trust, mask_distances),
                )
                if term is not None
            ]
        live = torch.nonzero(weight.sum(-1) > 0).flatten().tolist()
        if len(live) == 1:  # one camera sees the body's depth poorly: hold it to the init
            hold = depth_hold_term(pinhole, live[0], joints_init, cues)
            extra += [hold] if hold is not None else []
        if cfg.fusion == "joint" or len(live) == 1:
            res = yield from fit(_FitRequest(current, targets, prev, tuple(extra), False))
            new_pose, new_transl = res.pose_rotvecs[0], res.transl[0]
            new_residual = res.residual_px[0]
        else:
            res = yield from fit(_FitRequest(current, targets, prev, (), True))
            jw = _joint_visibility_weights(model, weight)  # (V, 24)
            active = jw.sum(-1) > 0
            fused_pose, fused_t = fuse_bodies(
                res.pose_rotvecs[0][active][:, None],
                res.transl[0][active][:, None],
                jw[active][:, None],
                view_dirs[active],
                cfg.translation_fusion,
            )
            new_pose, new_transl = fused_pose[0], fused_t[0]
            with torch.no_grad():  # residual of the fused body against each view's targets
                v_f = model(new_pose[None], betas[None], new_transl[None]).vertices[0]
                d = (project(pinhole, v_f, distort=False) - uv_target).norm(dim=-1)
                new_residual = (weight * d).sum(-1) / weight.sum(-1).clamp_min(1e-6)
        iterations += res.iterations
        # a camera whose targets the field check dropped: its residual is reported against them
        # (measured below, on the body the round keeps)
        remeasure = bool((weight.sum(-1) <= 0).logical_and(all_weight.sum(-1) > 0).any())
        residual_weight = all_weight if remeasure else weight
        if not (torch.isfinite(new_pose).all() and torch.isfinite(new_transl).all()):
            status = "diverged"
            notes.append(f"round {r + 1}: the fit diverged (non-finite pose or translation)")
            break
        gain = math.inf  # the round's evidence gain, where the guard measures it
        if evidence is not None and cues.guard:
            cost_new, per_view = evidence_cost(model, definition, rig, new_pose, betas, new_transl, evidence, trust)
            objections = guard_objections(per_view, cur_views, trust, rig.names, cues)
            for k in range(1, cues.guard_backtrack + 1 if objections else 0):
                # the direction may be right and the step too long (the initial estimate sits at
                # the keypoints' optimum, so their cost grows with the square of the step)
                step = 0.5**k
                part_pose = roma.rotvec_slerp(pose, new_pose, torch.tensor([step], dtype=pose.dtype, device=dev))[0]
                part_transl = transl + step * (new_transl - transl)
                part = evidence_cost(model, definition, rig, part_pose, betas, part_transl, evidence, trust)
                if not guard_objections(part[1], cur_views, trust, rig.names, cues):
                    notes.append(f"round {r + 1}: {step:g} of the update kept (the whole one agrees less with "
                                 f"{' and '.join(objections)})")  # fmt: skip
                    (cost_new, per_view), objections = part, []
                    new_pose, new_transl, remeasure = part_pose, part_transl, True
                    break
            if objections:
                why = f"it agrees less with {' and '.join(objections)}"
                cost_old_w = weighted_cost(cur_views, trust)  # the current body, same evidence, same weights
                notes.append(f"round {r + 1}: update rejected, {why} (cost {cost_new:.4f} vs {cost_old_w:.4f})")
                if r == 0:
                    status = "kept"
                    residual = _target_residual(pinhole, vertices_world, uv_target, weight)
                if _hands_over(predictor, r, cfg.outer_iterations):
                    continue
                break
            gain = 1.0 - cost_new / max(weighted_cost(cur_views, trust), 1e-12)  # same evidence, same weights
            cost_cur, cur_views = cost_new, per_view
            status = "done" if status == "kept" else status  # a later predictor's round was kept
            if cues.trust and r == 0:  # trust is set once, from the start and the first accepted update
                trust = np.minimum(trust, view_trust(view_costs(per_view), cues.trust_ratio))
        pose, transl, residual = new_pose, new_transl, new_residual
        more = r + 1 < cfg.outer_iterations and not _hands_over(predictor, r, r + 2)
        posed = None  # the kept body, posed at most once: for its residual, the settling test, the next round
        if remeasure:
            with torch.no_grad():
                posed = model(pose[None], betas[None], transl[None])
            residual = _target_residual(pinhole, posed.vertices[0], uv_target, residual_weight)
        if more:
            if gain < cfg.round_stop_gain:
                notes.append(f"rounds ended after round {r + 1}: it improved the agreement with the keypoints "
                             f"and masks by {100 * gain:.2f} %")  # fmt: skip
                break
            if cfg.round_stop_mm > 0:
                if posed is None:
                    with torch.no_grad():
                        posed = model(pose[None], betas[None], transl[None])
                moved_mm = 1000.0 * float((posed.vertices[0] - vertices_world).norm(dim=-1).mean())
                log.debug("round %d moved the body %.2f mm", r + 1, moved_mm)
                if moved_mm < cfg.round_stop_mm:
                    notes.append(f"rounds ended after round {r + 1}: it moved the body {moved_mm:.1f} mm on average")
                    break
    if evidence is not None and status not in FAILED_STATES:
        if not cues.guard:  # the guard keeps the current body's costs; without it, measure them now
            cost_cur, cur_views = evidence_cost(model, definition, rig, pose, betas, transl, evidence, trust)
        clash = contradicting_views(cur_views, trust, cues)
        if clash:
            status = "contradictory evidence"
            notes.append(
                f"no body agrees with the keypoints and masks of camera(s) {', '.join(rig.names[v] for v in clash)} "
                "(another person detected, a wrong mask, or a wrong initial estimate)"
            )
    residual = residual.clone()
    for v in skipped_all:
        residual[v] = float("nan")
    low = [rig.names[v] for v in range(len(rig)) if 0 < trust[v] < 0.5]
    if low:
        notes.append(f"camera(s) {', '.join(low)} disagree with the others and were down-weighted")
    if skipped_all and status != "out of view":
        names = [rig.names[v] for v in sorted(skipped_all)]
        warnings.warn(
            f"views {names} saw fewer than {cfg.min_visible_vertices} body vertices and were skipped", stacklevel=2
        )
    return FrameResult(
        pose.detach().cpu().numpy(),
        betas.cpu().numpy(),
        transl.detach().cpu().numpy(),
        residual.cpu().numpy(),
        iterations,
        clock["spent"] + time.perf_counter() - clock["since"],
        tuple(rig.names[v] for v in sorted(skipped_all)),
        status,
        tuple(notes),
        trust.copy(),
        tuple(rig.names[v] for v in dead),
        (cost_start, cost_cur),
        rounds,
    )


def _no_keypoints(definition) -> np.ndarray:
    kp = np.full((len(definition.names), 3), np.nan, np.float32)
    kp[:, 2] = 0.0
    return kp


def keypoint_targets(
    rig: Rig, joints_world: Tensor, noise_px: float, dropout: float, rng: np.random.Generator
) -> Targets:
    """Sparse 2D joint targets (1, V, 24, 2) from 3D joints: projected into the undistorted
    image, with Gaussian pixel noise and random dropout, like a keypoint detector's output."""
    uv = project(rig.without_distortion(), joints_world.to(torch.float64), distort=False).to(torch.float32)
    uv = uv + torch.as_tensor(rng.normal(scale=noise_px, size=uv.shape), dtype=torch.float32)
    weight = torch.as_tensor(rng.random(uv.shape[:-1]) >= dropout, dtype=torch.float32)
    W, H = (torch.tensor([c.image_size[k] for c in rig], dtype=uv.dtype)[:, None] for k in (0, 1))  # (V, 1) each
    inside = (uv[..., 0] > -0.5) & (uv[..., 0] < W - 0.5) & (uv[..., 1] > -0.5) & (uv[..., 1] < H - 0.5)
    return Targets(uv[None], (weight * inside)[None], points="joints", distorted=False)


def keypoint_fit_frame(
    model: BodyModel,
    rig: Rig,
    targets: Targets,
    init: BodyParams,
    cfg: FitConfig = FitConfig(),
    threads: int = 1,
) -> FrameResult:
    """The sparse-keypoint baseline: the same fitter on 2D joint targets (what keypoint
    pipelines such as EasyMocap do). init: the frame's initial estimate (one frame)."""
    t0 = time.perf_counter()
    with torch_threads(threads):
        res = fit_body(model, rig.without_distortion(), init, targets, cfg)
    return FrameResult(
        res.pose_rotvecs[0].numpy(),
        init.betas[0],
        res.transl[0].numpy(),
        res.residual_px[0].numpy(),
        res.iterations,
        time.perf_counter() - t0,
    )


class PredictorSchedule:
    """Predictors per refinement round (``predictor = "learned,flow"``): round r uses
    ``predictors[min(r, len - 1)]``; called directly, the first one."""

    def __init__(self, name: str, predictors: list[DisplacementPredictor]):
        self.name, self.predictors = name, predictors

    def for_round(self, r: int) -> DisplacementPredictor:
        return self.predictors[min(r, len(self.predictors) - 1)]

    def __call__(self, request: PredictRequest) -> Displacement:
        return self.predictors[0](request)


def _round_predictor(predictor, r: int):
    return predictor.for_round(r) if isinstance(predictor, PredictorSchedule) else predictor


def _hands_over(predictor, r: int, rounds: int) -> bool:
    """A rejected round goes on to the next round when another predictor takes over there."""
    return r + 1 < rounds and _round_predictor(predictor, r + 1) is not _round_predictor(predictor, r)


def resolve_predictor(cfg: RefineConfig, subject: Subject | None) -> RefineConfig:
    """``cfg`` with ``predictor = "auto"`` made concrete: "learned" when the subject carries a
    network adapted to it (`mvcap adapt`) and ``adapted`` is on, or ``learned_weights`` names
    one; else "flow". On the real take the adapted network beat flow and the shipped one did
    not (docs/BENCHMARKS.md, "A network adapted to flow's result"). Other predictors: ``cfg``."""
    if cfg.predictor != "auto":
        return cfg
    adapted = cfg.adapted and subject is not None and subject.displacement_net is not None
    return replace(cfg, predictor="learned" if adapted or cfg.learned_weights else "flow")


def make_predictor(
    name: str, cfg: RefineConfig, gt_vertices: Tensor | None = None, subject: Subject | None = None
) -> DisplacementPredictor:
    """The predictor ``name`` (one of :data:`PREDICTORS`, or a comma-joined per-round schedule).
    subject: the session's; the learned predictor uses its adapted network (see
    :attr:`RefineConfig.learned_weights`)."""
    if name == "auto":
        name = resolve_predictor(cfg, subject).predictor
    if "," in name:
        made: dict[str, DisplacementPredictor] = {}
        for n in name.split(","):
            made[n] = made.get(n) or make_predictor(n, cfg, gt_vertices, subject)
        return PredictorSchedule(name, [made[n] for n in name.split(",")])
    if name == "oracle":
        if gt_vertices is None:
            raise ValueError("the oracle predictor needs ground truth; this session has none")
        return OraclePredictor(gt_vertices)
    if name == "flow":
        return FlowPredictor(cfg.flow)
    if name == "learned":
        from mvcap.nets.predictor import LearnedPredictor

        if cfg.learned_weights:
            weights = cfg.learned_weights
        elif cfg.adapted and subject is not None and subject.displacement_net is not None:
            weights = subject.displacement_net
        else:
            weights = None
        return LearnedPredictor.load(
            weights,
            # a loop on the GPU keeps the network there; on the CPU, the fastest device
            device="auto" if cfg.device == "cpu" else str(resolve_device(cfg.device)),
            confidence_px=cfg.learned_confidence_px,
            fine_px=cfg.learned_fine_px,
            max_crop=cfg.learned_max_crop,
            flow=cfg.flow,
        )
    raise ValueError(f"unknown predictor {name!r}; use one of {PREDICTORS}")


def model_on_device(model: BodyModel, device: str) -> BodyModel:
    """The body model on ``device`` (:attr:`RefineConfig.device`): itself when it is there
    already, else a copy moved there (the caller's model stays where it is)."""
    dev = resolve_device(device)
    here = model.v_template.device
    if here.type == dev.type and (dev.index is None or here.index == dev.index):
        return model
    return copy.deepcopy(model).to(dev)


def _log_weights(predictor) -> None:
    """Say which network weights a learned predictor (or a schedule's) runs with."""
    for p in getattr(predictor, "predictors", [predictor]):
        if hasattr(p, "source"):
            log.info("learned predictor: weights from %s", p.source)
            return


@dataclass(frozen=True)
class FrameTask:
    """What refining frame ``t`` reads from the session file, with no file handle kept: it can
    be refined in another process or on another machine (:mod:`mvcap.batch`). inputs: the
    cameras, undistorted photos and the frame's own initial estimate (:func:`load_frame_inputs`);
    evidence: the detector's per-view evidence (:func:`frame_evidence`, None without
    detections); gt: the frame's ground truth (1 frame; the oracle predictor only)."""

    t: int
    inputs: FrameInputs
    evidence: list[ViewEvidence | None] | None = None
    gt: BodyParams | None = None


@dataclass(frozen=True)
class FrameOutcome:
    """What became of one frame: its result (None when it could not be refined), the reason
    it failed ("" when it did not; a failed result's reason is its status and notes),
    no_init (the frame had no initial estimate: skipped), previous_rejected (init="previous"
    fell back to the frame's own estimate), views (the cameras of its result, in order)."""

    t: int
    result: FrameResult | None = None
    failure: str = ""
    no_init: bool = False
    previous_rejected: bool = False
    views: tuple[str, ...] = ()


def read_frame_task(
    session, t: int, views: Sequence[str], cfg: RefineConfig, with_evidence: bool, gt=None
) -> FrameTask:
    """Read frame ``t`` of an open session for the cameras ``views``; ``with_evidence``: the
    session's detections are used (see :func:`refine_session`); gt: the session's ground truth
    (all frames) for the oracle predictor."""
    evidence = frame_evidence(session, t, session.rig.subset(list(views)), cfg.cues) if with_evidence else None
    return FrameTask(int(t), load_frame_inputs(session, t, views), evidence, None if gt is None else gt.slice(int(t)))


def needs_previous(cfg: RefineConfig) -> bool:
    """Whether a frame's refinement depends on the previous frame's result (init="previous" or
    a temporal term): then frames must run one after another, in order."""
    return cfg.init == "previous" or cfg.fit.w_temporal > 0


def refine_task(
    model: BodyModel,
    task: FrameTask,
    predictor: DisplacementPredictor | None,
    cfg: RefineConfig,
    appearance: Appearance = Appearance(),
    definition=None,
    prev: tuple[np.ndarray, np.ndarray] | None = None,
    catch: bool = True,
) -> FrameOutcome:
    """Refine one frame task; nothing is written. predictor: None = the oracle on the task's
    ground truth; prev: the previous frame's result (pose_rotvecs (24, 3), transl (3,)) for
    init="previous" and the temporal term, None when there is none. catch: an error in the
    frame becomes the outcome's failure instead of being raised."""
    t, inputs, evidence = task.t, task.inputs, task.evidence
    views = tuple(inputs.rig.names)
    start = inputs.init
    rejected = False
    if cfg.init == "previous" and prev is not None:
        candidate = BodyParams(prev[0][None], start.betas, prev[1][None])
        own_ok = np.isfinite(start.pose_rotvecs).all() and np.isfinite(start.transl).all()
        if evidence is not None and own_ok:
            # the previous result drifts on fast motion: keep it only if this frame's
            # evidence agrees with it at least as well as with the frame's own estimate
            betas0 = start.betas[0]
            c_prev, _ = evidence_cost(model, definition, inputs.rig, prev[0], betas0, prev[1], evidence)
            c_own, _ = evidence_cost(model, definition, inputs.rig, start.pose_rotvecs[0], betas0, start.transl[0],
                                     evidence)  # fmt: skip
            if c_prev > c_own:
                rejected = True
                candidate = start
        start = candidate
    if not _has_estimate(start):
        return _no_estimate(t, rejected, views)
    if predictor is None:
        with torch.no_grad():
            predictor = OraclePredictor(model(**task.gt.to_torch(device=model.v_template.device)).vertices[0])
    prev_pose = torch.as_tensor(prev[0]) if (prev is not None and cfg.fit.w_temporal > 0) else None
    try:
        res = refine_frame(model, inputs.rig, inputs.photos, start, predictor, cfg, appearance, prev_pose,
                           evidence, definition)  # fmt: skip
    except Exception as exc:  # one bad frame must not end a long run
        res = exc
    return _outcome(t, res, rejected, views, catch)


def _has_estimate(init: BodyParams) -> bool:
    return bool(np.isfinite(init.pose_rotvecs).all() and np.isfinite(init.transl).all())


def _no_estimate(t: int, rejected: bool, views: tuple[str, ...]) -> FrameOutcome:
    reason = "no initial estimate (no person found / init not run for this frame)"
    return FrameOutcome(t, None, reason, True, rejected, views)


def _outcome(t: int, res: FrameResult | Exception, rejected: bool, views: tuple[str, ...], catch: bool) -> FrameOutcome:
    """A refined frame's outcome; ``res`` an exception the frame raised (re-raised unless
    ``catch``)."""
    if isinstance(res, Exception):
        if not catch:
            raise res
        return FrameOutcome(t, None, f"refinement failed: {type(res).__name__}: {res}", False, rejected, views)
    failure = f"{res.status}: {'; '.join(res.notes)}" if res.failed else ""
    return FrameOutcome(t, res, failure, False, rejected, views)


def refine_tasks(
    model: BodyModel,
    tasks: Sequence[FrameTask],
    predictor: DisplacementPredictor | None,
    cfg: RefineConfig,
    appearance: Appearance = Appearance(),
    definition=None,
    catch: bool = True,
) -> list[FrameOutcome]:
    """Refine independent frame tasks of one session together (:func:`refine_frames`): each
    outcome as :func:`refine_task` gives it with no previous frame. With the oracle predictor
    (None), a single task or frames that need the previous result, one after another."""
    views = tuple(tasks[0].inputs.rig.names) if tasks else ()
    if (
        predictor is None
        or len(tasks) < 2
        or needs_previous(cfg)
        or any(tuple(task.inputs.rig.names) != views for task in tasks)
    ):
        return [refine_task(model, task, predictor, cfg, appearance, definition, None, catch) for task in tasks]
    ready = [task for task in tasks if _has_estimate(task.inputs.init)]
    frames = [FrameInput(task.inputs.photos, task.inputs.init, task.evidence) for task in ready]
    done = refine_frames(model, tasks[0].inputs.rig, frames, predictor, cfg, appearance, definition)
    results = {task.t: res for task, res in zip(ready, done)}
    return [
        _outcome(task.t, results[task.t], False, views, catch)
        if task.t in results
        else _no_estimate(task.t, False, views)
        for task in tasks
    ]


def record_outcome(writer, out: FrameOutcome, num_views: int, view_idx: list[int], failures: list | None,
                   events: dict) -> bool:  # fmt: skip
    """Write a refined frame's result (see :func:`refine_session` for failures and events);
    True when it was written (the frame is done)."""
    t = out.t
    if out.previous_rejected:
        events.setdefault("previous_rejected", []).append(t)
    if out.no_init:
        log.warning("frame %d has no initial estimate; skipped", t)
        if failures is not None:
            failures.append((t, out.failure))
        return False
    res = out.result
    if res is None:
        if failures is None:
            raise RefineError(f"frame {t}: {out.failure}")
        log.warning("frame %d failed: %s", t, out.failure.removeprefix("refinement failed: "))
        failures.append((t, out.failure))
        return False
    for name in res.dead_views:
        if name not in events.setdefault("dead_views", {}):  # say so now, not after hours of frames
            log.warning("camera %s shows no picture (dead or black) from frame %d: it is ignored", name, t)
        events["dead_views"].setdefault(name, []).append(t)
    if res.view_weights is not None:
        for v, w in enumerate(res.view_weights):
            if 0 < w < 0.5:
                events.setdefault("down_weighted", {}).setdefault(out.views[v], []).append(t)
    if res.failed:
        if failures is None:
            raise RefineError(f"frame {t}: {out.failure}")
        log.warning("frame %d failed: %s", t, out.failure)
        failures.append((t, out.failure))
        return False
    if res.status == "kept":
        events.setdefault("kept", []).append(t)
    if res.rounds:
        events.setdefault("rounds", []).append(res.rounds)
    write_frame_result(writer, t, res, num_views, view_idx)
    log.debug("frame %d: %s, residual %.2f px, %.1f s", t, res.status, np.nanmean(res.residual_px), res.seconds)
    return True


def refine_session(
    session_path: str | Path,
    run_name: str,
    cfg: RefineConfig = RefineConfig(),
    frames: list[int] | None = None,
    model: BodyModel | None = None,
    overwrite: bool = False,
    progress: bool = True,
    failures: list | None = None,
    appearance: Appearance | None = None,
    events: dict | None = None,
) -> object:
    """Refine the frames of a session file, writing each result as soon as it is done.

    Rerunning with the same run name skips finished frames (resume); ``overwrite`` starts
    over. Returns the session's Results for the run.
    appearance: how estimates are rendered for the predictor (default: the session's
    subject under ``cfg.appearance``, see :func:`estimate_appearance`).
    failures: if a list is given, a frame that cannot be refined (no initial estimate, the
    body out of every view, a diverged fit, or an error in the frame) is appended to it as
    ``(frame, reason)``, is not marked done (a rerun retries it) and the run goes on;
    otherwise frames without an initial estimate are skipped with a warning and other
    failures raise :class:`RefineError`.
    events: if a dict is given, it collects what the safeguards did: ``dead_views`` {camera:
    frames}, ``kept`` frames whose initial estimate was kept by the acceptance guard,
    ``down_weighted`` {camera: frames}, ``previous_rejected`` frames where init="previous"
    fell back to the frame's own estimate, ``rounds`` the rounds each refined frame ran.

    With the session's 2D detections (``mvcap detect``), every frame is also fitted to the
    detector's keypoints and masks and guarded by them (``cfg.cues``).
    One frame is :func:`read_frame_task` -> :func:`refine_task` -> :func:`record_outcome`;
    :mod:`mvcap.batch` runs the same steps with the middle one on Ray workers.
    """
    from tqdm import tqdm

    model = model_on_device(model or load_body_model(), cfg.device)
    with open_refine_run(session_path, run_name, cfg, frames, model, overwrite, appearance) as run:
        events = {} if events is None else events
        for key in ("dead_views", "down_weighted"):
            events.setdefault(key, {})
        for key in ("kept", "previous_rejected", "rounds"):
            events.setdefault(key, [])
        cfg = run.cfg  # "auto" resolved
        shared_predictor = (
            None if cfg.predictor == "oracle" else make_predictor(cfg.predictor, cfg, subject=run.subject)
        )
        _log_weights(shared_predictor)
        if model.v_template.device.type != "cpu":
            log.info("refining on %s (render, crops, network and fit on the device)", model.v_template.device)
        catch = failures is not None
        together = 1 if needs_previous(cfg) else cfg.frame_batch
        appearance = run.appearance.to(model.v_template.device)
        with tqdm(total=len(run.todo), desc=f"refine {run_name}", unit="frame", disable=not progress) as bar:
            for k in range(0, len(run.todo), together):
                chunk = run.todo[k : k + together]
                if len(chunk) == 1:
                    t = chunk[0]
                    outs = [refine_task(model, run.read_task(t), shared_predictor, cfg, appearance,
                                        run.definition, run.known.get(t - 1), catch=catch)]  # fmt: skip
                else:  # each frame is written as soon as its batch is done, in order; an error
                    # stays its frame's outcome, so the frames before it are written first
                    tasks = [run.read_task(t) for t in chunk]
                    outs = refine_tasks(model, tasks, shared_predictor, cfg, appearance, run.definition)
                for out in outs:
                    if run.record(out, failures, events):
                        res = out.result
                        bar.set_postfix(res_px=f"{np.nanmean(res.residual_px):.2f}", s=f"{res.seconds:.1f}")
                    bar.update(1)
        return run.session.read_results(run_name)


@dataclass
class RefineRun:
    """A results run open for refining (see :func:`open_refine_run`): the open session, its
    writer, the frames still to do (``todo``, in order), the known previous results
    ``known`` {frame: (pose_rotvecs (24, 3), transl (3,))}, the estimate's appearance, the
    detector's landmark definition (None without detections) and the session's subject."""

    session: object
    name: str
    cfg: RefineConfig
    writer: object
    views: list[str]
    view_idx: list[int]
    todo: list[int]
    known: dict
    appearance: Appearance
    definition: object
    gt: BodyParams | None
    subject: Subject | None = None

    def read_task(self, t: int) -> FrameTask:
        return read_frame_task(self.session, t, self.views, self.cfg, self.definition is not None, self.gt)

    def record(self, out: FrameOutcome, failures: list | None, events: dict) -> bool:
        """Write ``out`` (see :func:`record_outcome`); a written frame becomes known."""
        written = record_outcome(self.writer, out, len(self.session.rig), self.view_idx, failures, events)
        if written:
            self.known[out.t] = (out.result.pose_rotvecs, out.result.transl)
        return written


@contextlib.contextmanager
def open_refine_run(
    session_path: str | Path,
    run_name: str,
    cfg: RefineConfig,
    frames: list[int] | None,
    model: BodyModel,
    overwrite: bool = False,
    appearance: Appearance | None = None,
):
    """Open (create or resume) results run ``run_name`` of a session for refining: yields a
    :class:`RefineRun`; the session is closed on exit. Arguments as in :func:`refine_session`."""
    from mvcap.capture import Session
    from mvcap.config import to_dict

    with Session.open(session_path, mode="a") as session:
        full_rig = session.rig
        view_idx = [full_rig.index(n) for n in cfg.views] if cfg.views else list(range(len(full_rig)))
        views = [full_rig.names[i] for i in view_idx]
        subject = session.subject
        T = session.num_frames
        frames = list(range(T)) if frames is None else list(frames)
        bad = [t for t in frames if not 0 <= t < T]
        if bad:
            raise ValueError(f"frames {bad[:5]} are outside the session's 0..{T - 1}")
        gt = None
        if cfg.predictor == "oracle":
            if not session.has_ground_truth:
                raise ValueError(f"{session_path}: the oracle predictor needs ground truth, which this session lacks")
            gt = session.read_ground_truth()
        if subject is None and cfg.predictor != "oracle":
            raise ValueError(f"{session_path}: no subject stored; register the subject first (mvcap register)")
        if appearance is None:
            appearance = estimate_appearance(model, subject, cfg.appearance)
        cfg = resolve_predictor(cfg, subject)  # the run stores (and resumes with) the one it runs
        writer = session.results_run(run_name, config=to_dict(cfg), overwrite=overwrite)
        done = writer.done_frames()
        todo = [t for t in frames if not done[t]]
        # previous frames' results, for init="previous" and the temporal term
        known = {}
        if todo and todo[0] > 0 and done[todo[0] - 1]:
            prev_run = session.read_results(run_name)
            known[todo[0] - 1] = (prev_run.pose_rotvecs[todo[0] - 1], prev_run.transl[todo[0] - 1])
        definition = None
        if session.has_detections:
            definition = keypoint_set(session.keypoint_format).definition(model)
        yield RefineRun(
            session, run_name, cfg, writer, views, view_idx, todo, known, appearance, definition, gt, subject
        )
