"""Per-subject adaptation of the displacement network to one capture.

The shipped network was trained on synthetic renders; a studio's photos differ (cameras,
lighting, clothing, background, other people). Self-training (``route = "self"``)
fine-tunes it on the capture's own photos, paired with renders of the registered subject
posed *around* the capture's multi-view estimate (from keypoints, silhouettes and all
cameras): the target of each rendered pixel is the displacement back to that estimate
(eq. 1-2 with the estimate in place of ground truth). The network so learns what this person
looks like in these cameras from the real pixels; the multi-view estimate is the label, and
its errors are learned too (on synthetic footage, where the shipped network has no domain
gap, adapting it to a keypoint init made it worse: docs/BENCHMARKS.md). Use it where the
photos are unlike the training renders, and with the best estimate at hand (``source``):
``source = "flow"`` first refines the chosen frames with the flow predictor (with the
detector's cues and guard, as ``mvcap refine`` does) and labels with that result, which is
closer to the person than the keypoint init it starts from.

The composite route (``route = "composite"``, or "both" to mix them) needs no label: the
subject is rendered in poses around the estimate's, over each camera's background plate (the
per-pixel median of the take with the detected person masked out, :func:`background_plates`)
with the camera's sensor noise, and the target is the exact displacement. Its photos are the
capture's background and the subject's registered texture, not the real person's pixels.

Samples are made exactly as refinement makes its requests (:func:`mvcap.refine.view_windows`,
:func:`mvcap.refine.estimate_request`, :func:`mvcap.nets.data.crop_sample`), so the network
sees at adaptation what it sees in use. In self-training, pixels whose target falls outside
the detector's person mask are left out of the loss when the session has detections
(``mask_to_person``).

A slice of the frames (``val_every``) is held out: the report compares, on the capture's own
photos of them (whatever the route), the end-point error of the shipped and the adapted
network against the estimate. That is agreement with the label, not accuracy: judge the
adapted weights by cross-validation (``mvcap validate``) on frames they were not adapted on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvcap.errors import MvcapError
from mvcap.subject import Subject

__all__ = [
    "AdaptConfig",
    "AdaptError",
    "AdaptResult",
    "FLOW_LABEL_RUN",
    "BackgroundPlates",
    "adapt_network",
    "adapt_subject",
    "adaptation_samples",
    "background_plates",
    "composite_samples",
    "flow_labels",
]


ROUTES = ("self", "composite", "both")

#: the results run ``source = "flow"`` refines the adaptation frames into (the label)
FLOW_LABEL_RUN = "adapt-flow-label"


class AdaptError(MvcapError):
    """Adaptation cannot run on this session (no frames with an estimate, no subject, ...)."""


@dataclass(frozen=True)
class AdaptConfig:
    """Self-training of the displacement network on one capture (``configs/adapt.toml``).

    source: the estimates the photos are paired with: "flow" (the default: the frames refined
      first with the flow predictor, into the results run :data:`FLOW_LABEL_RUN`), "init"
      (the session's initial estimates) or the name of a results run.
    route: "self" (the capture's photos, labelled by the estimate), "composite" (renders of
      the subject over the capture's background plates, labelled exactly) or "both".
    views: cameras to use (empty: all).
    max_frames: at most this many frames, spread evenly over the chosen ones (samples are
      kept in memory: ~0.6 MB each, ``perturbations`` x cameras per frame).
    perturbations: renders per frame, each around the estimate with a fresh error.
    error_scale: (lo, hi) size of that error, drawn per render, in units of the
      regression-like error of :func:`mvcap.motions.perturb_like_regressor` (per-joint
      5-15 deg, global 5 deg, root 4 cm): 0.1-0.6 is the studio regime (~10-40 mm).
    mask_to_person: leave out pixels whose target is off the detector's person mask.
    val_every: every this many-th frame is held out for the report (0: none).
    steps / batch_size / lr / lr_min_ratio: Adam, cosine decay to ``lr * lr_min_ratio``.
    threads: torch threads for training (0: as the process had them before rendering; on a
      quiet 2-core machine 2 threads took 0.73 s per step of 8 crops, 1 thread 0.93 s).
    pose_spread: composite route: the rendered "true" poses lie around the estimate's, drawn
      with this scale of the regression-like error (new poses near the capture's, in its
      places); the estimate to correct is then drawn around them with ``error_scale``.
    plate_frames: composite route: frames (spread over the take) whose per-pixel median,
      with the person masked out, is each camera's background plate.
    loose_prob / jpeg_prob: composite route: per composite, hair and loose clothing beyond the
      subject's silhouette (:func:`mvcap.nets.augment.loose_layer`, 1-4 patches of 4-12 % of
      its height) and a JPEG round trip at quality 40-90 (the capture's video compression);
      the plates come from the footage, the rendered subject has neither (0: off).
    confidence: give the network a confidence head (if it has none) and train it too: each
      pixel's expected error, which refinement then uses as the target weight.
    fine_px / max_crop: refinement's coarse-to-fine pass (``learned_fine_px`` /
      ``learned_max_crop`` of :class:`~mvcap.refine.RefineConfig`); each render also gives,
      per camera, a tile at that pass's resolution (a crop of the training size around a
      random point of the body), so the network learns the scale it will also see (0: none).
    seed: perturbations and batches.
    """

    source: str = "flow"
    route: str = "both"
    views: tuple[str, ...] = ()
    max_frames: int = 40
    perturbations: int = 3
    error_scale: tuple[float, float] = (0.1, 0.6)
    mask_to_person: bool = True
    val_every: int = 5
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-4
    lr_min_ratio: float = 0.1
    threads: int = 0
    pose_spread: float = 0.5
    plate_frames: int = 24
    loose_prob: float = 0.0
    jpeg_prob: float = 0.0
    confidence: bool = False
    fine_px: float = 0.0
    max_crop: int = 192
    seed: int = 0

    def __post_init__(self):
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.pose_spread < 0 or self.plate_frames < 1:
            raise ValueError("pose_spread must be >= 0 and plate_frames >= 1")
        if not (0 <= self.loose_prob <= 1 and 0 <= self.jpeg_prob <= 1):
            raise ValueError(f"loose_prob and jpeg_prob must be in [0, 1], got {self.loose_prob}, {self.jpeg_prob}")
        if not self.fine_px >= 0 or self.max_crop < 16:
            raise ValueError(
                f"fine_px must be >= 0 (0: no tiles) and max_crop >= 16, got {self.fine_px} and {self.max_crop}"
            )
        lo, hi = self.error_scale
        if not 0 <= lo <= hi:
            raise ValueError(f"error_scale must be (lo, hi) with 0 <= lo <= hi, got {self.error_scale}")
        if self.perturbations < 1 or self.max_frames < 1 or self.steps < 0 or self.batch_size < 1:
            raise ValueError("perturbations, max_frames and batch_size must be >= 1 and steps >= 0")
        if self.val_every < 0 or self.val_every == 1:
            raise ValueError(f"val_every must be 0 (no held-out frames) or >= 2, got {self.val_every}")
        if not self.lr > 0 or not 0 < self.lr_min_ratio <= 1:
            raise ValueError("lr must be > 0 and lr_min_ratio in (0, 1]")


@dataclass(frozen=True)
class AdaptResult:
    """What adaptation did: frames used for training / held out, samples made, steps run,
    seconds (making samples, training), and on the held-out samples the mean end-point error
    (image px) against the estimate of predicting nothing, of the network before and after;
    how many of the training samples were composites (the composite route); the label
    (``AdaptConfig.source``: "flow", "init" or a results run's name)."""

    train_frames: tuple[int, ...]
    val_frames: tuple[int, ...]
    train_samples: int
    val_samples: int
    steps: int
    sample_seconds: float
    train_seconds: float
    val_epe_zero_px: float = float("nan")
    val_epe_before_px: float = float("nan")
    val_epe_after_px: float = float("nan")
    composite_samples: int = 0
    source: str = ""

    def describe(self) -> str:
        kind = f", {self.composite_samples} of them composites" if self.composite_samples else ""
        label = {"flow": f"flow's refinement (run {FLOW_LABEL_RUN!r})", "init": "the initial estimates", "": ""}.get(
            self.source, f"run {self.source!r}"
        )
        s = (
            f"adapted on {len(self.train_frames)} frames ({self.train_samples} samples{kind}"
            + (f", labelled by {label}" if label else "")
            + f") for {self.steps} steps in {self.sample_seconds + self.train_seconds:.0f} s"
        )
        if self.val_samples:
            s += (
                f"; on {len(self.val_frames)} held-out frames, end-point error against the estimate "
                f"{self.val_epe_before_px:.2f} px before, {self.val_epe_after_px:.2f} px after "
                f"(predicting nothing: {self.val_epe_zero_px:.2f} px)"
            )
        return s


def _estimates(session, source: str):
    """BodyParams (T frames) of the source and a (T,) bool of the frames that have one."""
    if source == "init":
        ok = session.init_valid
        if not ok.any():
            raise AdaptError(f"{session.path} has no initial estimates; run `mvcap init` first")
        return session.read_init(require_valid=False), ok
    if source not in session.result_names():
        raise AdaptError(
            f"{session.path} has no results run {source!r} to adapt to; runs are {session.result_names()} "
            "(or use source = 'init')"
        )
    res = session.read_results(source)
    return res.params, res.done.copy()


def _spread(frames: list[int], most: int) -> list[int]:
    """At most ``most`` of ``frames``, spread evenly over them."""
    if len(frames) <= most:
        return frames
    return [frames[i] for i in np.linspace(0, len(frames) - 1, most).round().astype(int)]


def _check_frames(session, frames: list[int] | None) -> list[int]:
    """``frames`` (default: all) as ints, or a clear error for one outside the session."""
    T = session.num_frames
    frames = list(range(T)) if frames is None else [int(t) for t in frames]
    outside = [t for t in frames if not 0 <= t < T]
    if outside:
        raise AdaptError(f"frames {outside[:5]} are outside {session.path}'s frames 0..{T - 1}")
    return frames


def flow_labels(session_path, frames: list[int], refine_cfg=None, progress: bool = True) -> int:
    """Refine ``frames`` of the session with the flow predictor into :data:`FLOW_LABEL_RUN`
    (resumed when its settings are these, else started over); returns how many of them it
    holds. ``refine_cfg``: the refinement's settings (default: ``configs/refine.toml``), its
    predictor replaced by flow."""
    from mvcap.capture import Session
    from mvcap.config import load_config
    from mvcap.refine import RefineConfig, refine_session

    rcfg = dataclasses.replace(refine_cfg or load_config(RefineConfig, "refine.toml"), predictor="flow")
    with Session.open(session_path) as session:
        if session.subject is None:
            raise AdaptError(
                f"source = 'flow' refines {session_path} before adapting, which needs the subject stored in it: "
                "`mvcap register --write-session`, or `mvcap refine --subject FILE` once"
            )
        stale = FLOW_LABEL_RUN in session.result_names() and not session.results_config_matches(FLOW_LABEL_RUN, rcfg)
    failures: list = []
    res = refine_session(session_path, FLOW_LABEL_RUN, rcfg, frames=frames, overwrite=stale, progress=progress,
                         failures=failures)  # fmt: skip
    return int(res.done[frames].sum())


def _window_mask(mask: np.ndarray, box, size) -> np.ndarray:
    """An image's bool mask (H, W) -> the window ``box`` (x0, y0, w, h) at ``size`` (W, H)."""
    import cv2

    x0, y0, w, h = (int(a) for a in box)
    part = mask[y0 : y0 + h, x0 : x0 + w].astype(np.uint8)
    if (int(size[0]), int(size[1])) != (w, h):
        part = cv2.resize(part, (int(size[0]), int(size[1])), interpolation=cv2.INTER_NEAREST)
    return part.astype(bool)


def _on_person(person: np.ndarray, flow: np.ndarray, rendered: np.ndarray) -> np.ndarray:
    """Rendered pixels (H, W) whose target (pixel + flow (H, W, 2)) lies on the person mask."""
    H, W = rendered.shape
    ys, xs = np.nonzero(rendered)
    tx = np.rint(xs + flow[ys, xs, 0]).astype(np.int64)
    ty = np.rint(ys + flow[ys, xs, 1]).astype(np.int64)
    inside = (tx >= 0) & (tx < person.shape[1]) & (ty >= 0) & (ty < person.shape[0])
    keep = np.zeros(len(xs), bool)
    keep[inside] = person[ty[inside], tx[inside]]
    out = np.zeros((H, W), bool)
    out[ys[keep], xs[keep]] = True
    return out


def _perturbed(rng, pose, transl, betas, scale: float, pinhole):
    """(pose (1, 24, 3), transl (1, 3)) with ``scale`` x the regression-like error, as seen by
    one of the cameras drawn at random (the root error is larger along its axis)."""
    from mvcap import motions as M

    pcfg = M.PerturbConfig(joint_deg=(5.0 * scale, 15.0 * scale), global_deg=5.0 * scale, transl_std_m=0.04 * scale)
    cam = pinhole[int(rng.integers(len(pinhole)))]
    p_pose, p_transl, _ = M.perturb_like_regressor(rng, pose, transl, betas, cfg=pcfg, R_world2cam=cam.R_world2cam)
    return p_pose, p_transl


def _view_crops(net_cfg, req, flow: np.ndarray, cfg: AdaptConfig, image_px, rng):
    """(view, rendered mask (H, W) bool, :func:`mvcap.nets.data.crop_sample` with ``flow``
    (V, H, W, 2) as target) for each view of the request ``req`` whose render covers 50 pixels:
    the network's window and, with ``cfg.fine_px``, a tile at the coarse-to-fine pass's
    resolution around a random rendered pixel (``image_px`` (V,) image pixels per request
    pixel). A flow-prior network's crops carry refinement's flow on ``req``."""
    from mvcap.displace import FlowPredictor
    from mvcap.nets.data import crop_sample
    from mvcap.nets.displacement import tile_window
    from mvcap.nets.predictor import fine_crop_size

    S = net_cfg.crop_size
    masks = req.fragments.mask.numpy().astype(bool)
    images = req.passes.images.numpy()
    prior = None
    if net_cfg.flow_prior:
        d = FlowPredictor()(req)
        prior = d.flow.numpy(), d.confidence.numpy()
    for view in range(len(masks)):
        if masks[view].sum() < 50:
            continue
        prior_v = None if prior is None else (prior[0][view], prior[1][view])
        crop = crop_sample(net_cfg, req.photos[view], images[view], req.passes.channels, masks[view], flow[view],
                           prior=prior_v)  # fmt: skip
        yield view, masks[view], crop
        L = float(crop["window"])
        size = fine_crop_size(net_cfg, L, float(image_px[view]), cfg.fine_px, cfg.max_crop)
        if size > S:  # that pass sees the window at size / S times the resolution: an S-crop of a part
            tile = tile_window(masks[view], int(round(L * S / size)), rng)
            args = (req.photos[view], images[view], req.passes.channels, masks[view], flow[view])
            yield view, masks[view], crop_sample(net_cfg, *args, window=tile, prior=prior_v)


def _item(crop: dict, t: int, windows, view: int) -> dict:
    """A crop of the render window ``view`` of ``windows`` as a training sample: ``px`` image
    pixels per network unit and the frame ``t``, without the window's corner."""
    out = {k: v for k, v in crop.items() if k not in ("x0", "y0")}
    out["px"] = crop["window"] * float(windows.image_px[view])
    out["frame"] = torch.tensor(t)
    return out


def _stacked(items: list[dict]) -> dict:
    """Samples -> one dict of stacked tensors (empty for none)."""
    return {key: torch.stack([it[key] for it in items]) for key in items[0]} if items else {}


def adaptation_samples(
    session, subject: Subject, frames, cfg: AdaptConfig, net_cfg, model=None, progress: bool = False
) -> dict:
    """Training samples of ``frames`` of an open session, rendering ``subject`` (see the module
    docstring): a dict of stacked tensors photo (B, 3, S, S), render (B, C, S, S), mask
    (B, 1, S, S), target (B, 2, S, S) (network units), px (B,) image pixels per unit, frame (B,)."""
    from tqdm import tqdm

    from mvcap.body import load_body_model
    from mvcap.displace import OraclePredictor
    from mvcap.nets.displacement import CropWindow, crop_passes
    from mvcap.nets.predictor import request_side
    from mvcap.refine import (
        estimate_appearance,
        estimate_request,
        frame_evidence,
        load_frame_inputs,
        view_windows,
    )

    model = model or load_body_model()
    params, ok = _estimates(session, cfg.source)
    appearance = estimate_appearance(model, subject)
    template = model.template_vertices()[0]
    max_side = request_side(net_cfg, cfg.max_crop)  # what the learned predictor asks refinement for
    S = net_cfg.crop_size
    items = []
    for t in tqdm(list(frames), desc="adapt: samples", unit="frame", disable=not progress):
        t = int(t)
        if not ok[t]:
            continue
        inputs = load_frame_inputs(session, t, list(cfg.views))
        pinhole = inputs.rig.without_distortion()
        evidence = frame_evidence(session, t, inputs.rig) if cfg.mask_to_person else None
        betas = np.asarray(subject.betas, np.float64)
        pose, transl = params.pose_rotvecs[t : t + 1].astype(np.float64), params.transl[t : t + 1].astype(np.float64)
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        with torch.no_grad():
            est_v = model(f32(pose), f32(betas[None]), f32(transl)).vertices[0]
        oracle = OraclePredictor(est_v)
        for k in range(cfg.perturbations):
            rng = np.random.default_rng([cfg.seed, t, k])
            p_pose, p_transl = _perturbed(rng, pose, transl, betas, float(rng.uniform(*cfg.error_scale)), pinhole)
            with torch.no_grad():
                v = model(f32(p_pose), f32(betas[None]), f32(p_transl)).vertices[0]
            windows = view_windows(pinhole, v, max_side)
            req = estimate_request(model, pinhole, inputs.photos, v, appearance, template, windows)
            flow = oracle(req).flow.numpy()
            for view, rendered, c in _view_crops(net_cfg, req, flow, cfg, windows.image_px, rng):
                ev = evidence[view] if evidence is not None else None
                if ev is not None and ev.mask is not None:
                    person = _window_mask(ev.mask, windows.boxes[view], windows.sizes[view])
                    keep = _on_person(person, flow[view], rendered)
                    win = CropWindow(int(c["x0"]), int(c["y0"]), int(round(float(c["window"]))))
                    cov, _ = crop_passes(keep[..., None].astype(np.float32), rendered, win, S)
                    c["mask"] = c["mask"] * torch.from_numpy((cov[..., 0] > 0.5).astype(np.float32))[None]
                if float(c["mask"].sum()) < 20:
                    continue
                items.append(_item(c, t, windows, view))
    return _stacked(items)


@dataclass(frozen=True)
class BackgroundPlates:
    """Each camera's background with the person removed (:func:`background_plates`): images
    (V, H, W, 3) uint8 in the undistorted pinhole image (the rig's canvas); noise_std (V,) the
    sensor noise (8-bit levels, robust std of photo - plate off the person); holes (V,) the
    fraction of pixels the person covered in every frame (inpainted)."""

    images: np.ndarray
    noise_std: np.ndarray
    holes: np.ndarray


def background_plates(session, views=(), max_frames: int = 24, grow_px: int = 15, progress: bool = False):
    """:class:`BackgroundPlates` of an open session's cameras ``views`` (empty: all): the
    per-pixel median of up to ``max_frames`` frames spread over the take, leaving out each
    frame's detector person mask grown by ``grow_px``; pixels covered in every frame are
    inpainted. Other people stay where they stood still; without detections the median alone
    removes the person only where they moved."""
    import cv2
    from tqdm import tqdm

    from mvcap.refine import frame_evidence, load_frame_inputs

    T = session.num_frames
    frames = np.unique(np.linspace(0, T - 1, min(max_frames, T)).round().astype(int))
    photos, masks = [], []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow_px + 1, 2 * grow_px + 1))
    for t in tqdm(frames, desc="adapt: background", unit="frame", disable=not progress):
        inputs = load_frame_inputs(session, int(t), list(views))
        evidence = frame_evidence(session, int(t), inputs.rig)
        photos.append(inputs.photos)
        H, W = inputs.photos.shape[1:3]
        m = np.zeros((len(inputs.photos), H, W), bool)
        for v, ev in enumerate(evidence or []):
            if ev is not None and ev.mask is not None:
                h, w = ev.mask.shape
                m[v, :h, :w] = cv2.dilate(ev.mask.astype(np.uint8), kernel) > 0
        masks.append(m)
    photos, masks = np.stack(photos), np.stack(masks)  # (F, V, H, W, 3), (F, V, H, W)
    F, V, H, W = masks.shape
    plates = np.zeros((V, H, W, 3), np.uint8)
    noise, holes = np.zeros(V), np.zeros(V)
    for v in range(V):
        for y in range(0, H, 64):  # in bands, to bound the sorted copy
            # masked median: masked values sort to the end, take the middle of the rest
            block = photos[:, v, y : y + 64].astype(np.uint16)
            m = masks[:, v, y : y + 64]
            block[m] = 1024
            block.sort(axis=0)
            mid = np.broadcast_to(((F - m.sum(0) - 1).clip(min=0) // 2)[None, ..., None], (1, *block.shape[1:]))
            plates[v, y : y + 64] = np.take_along_axis(block, mid, 0)[0].clip(max=255)
        hole = masks[:, v].all(0)
        holes[v] = hole.mean()
        if hole.any():
            # inpaint at a quarter of the size (Telea's cost grows with the hole), paste back
            small = cv2.resize(plates[v], (W // 4, H // 4), interpolation=cv2.INTER_AREA)
            small_hole = cv2.resize(hole.astype(np.uint8), (W // 4, H // 4), interpolation=cv2.INTER_NEAREST)
            filled = cv2.resize(cv2.inpaint(small, small_hole, 5, cv2.INPAINT_TELEA), (W, H))
            plates[v][hole] = filled[hole]
        # every 4th pixel of every 4th row of a few frames, off the person
        sub = (slice(None, None, max(1, F // 4)), v, slice(None, None, 4), slice(None, None, 4))
        free = ~masks[sub] & ~hole[None, ::4, ::4]
        d = (photos[sub].astype(np.int16) - plates[v, ::4, ::4][None].astype(np.int16))[free].reshape(-1)
        d = d[np.abs(d) < 12]  # the noise, not what moved (trimmed: a slight underestimate)
        noise[v] = float(d.std()) if d.size else 0.0
    return BackgroundPlates(plates, noise, holes)


def composite_samples(
    session, subject: Subject, frames, cfg: AdaptConfig, net_cfg, plates: BackgroundPlates, model=None,
    progress: bool = False,
) -> dict:  # fmt: skip
    """Training samples with exact targets (see :func:`adaptation_samples` for the dict): the
    subject (its shape and texture) rendered in a pose around the estimate of each of
    ``frames`` (``cfg.pose_spread``), under a light drawn per sample, composited over the
    cameras' background ``plates`` with their sensor noise and a little blur; the estimate to
    correct is drawn around that pose (``cfg.error_scale``) and rendered as refinement
    renders it; the target is the true displacement (eq. 1-2)."""
    import cv2
    from tqdm import tqdm

    from mvcap.body import load_body_model
    from mvcap.displace import OraclePredictor
    from mvcap.nets import augment
    from mvcap.nets.predictor import request_side
    from mvcap.refine import estimate_appearance, estimate_request, view_windows
    from mvcap.render import Light, render

    model = model or load_body_model()
    params, ok = _estimates(session, cfg.source)
    appearance = estimate_appearance(model, subject)
    template = model.template_vertices()[0]
    rig = session.rig if not cfg.views else session.rig.subset(list(cfg.views))
    pinhole = rig.without_distortion()
    betas = np.asarray(subject.betas, np.float64)
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    max_side = request_side(net_cfg, cfg.max_crop)
    items = []
    for t in tqdm(list(frames), desc="adapt: composites", unit="frame", disable=not progress):
        t = int(t)
        if not ok[t]:
            continue
        pose, transl = params.pose_rotvecs[t : t + 1].astype(np.float64), params.transl[t : t + 1].astype(np.float64)
        for k in range(cfg.perturbations):
            rng = np.random.default_rng([cfg.seed, 1, t, k])
            g_pose, g_transl = _perturbed(rng, pose, transl, betas, cfg.pose_spread, pinhole)
            e_pose, e_transl = _perturbed(rng, g_pose, g_transl, betas, float(rng.uniform(*cfg.error_scale)), pinhole)
            with torch.no_grad():
                gt_v = model(f32(g_pose), f32(betas[None]), f32(g_transl)).vertices[0]
                v = model(f32(e_pose), f32(betas[None]), f32(e_transl)).vertices[0]
            windows = view_windows(pinhole, v, max_side)
            wrig = windows.rig(pinhole)
            # the photo: the subject's texture carries the capture's lighting; a mild light on top
            ambient = float(rng.uniform(0.6, 1.0))
            d = np.array([0.0, 0.0, -1.0]) + rng.normal(0, 0.5, 3)
            d[2] = min(d[2], -0.2)
            light = Light(ambient=ambient, diffuse=1.0 - ambient, direction_cam=tuple(float(x) for x in d))
            frags, passes = render(wrig, gt_v, model.faces, passes=("rgb",), light=light, **appearance.render_kwargs())
            body = passes.get("rgb").numpy() * 255.0 * np.clip(1 + rng.normal(0, 0.04, 3), 0.85, 1.15)
            alpha = frags.mask.numpy().astype(np.float32)
            background = windows.crop(plates.images).astype(np.float32)
            photos = []
            for view in range(len(wrig)):
                a = cv2.GaussianBlur(alpha[view], (0, 0), 0.6)[..., None]  # soft edges, as a lens gives
                img = background[view] * (1 - a) + body[view] * a
                if augment.chance(rng, cfg.loose_prob):
                    lo, hi = augment.LOOSE_PATCHES
                    n = int(rng.integers(lo, hi + 1))
                    img, _ = augment.loose_layer(img, alpha[view] > 0.5, rng, n, augment.LOOSE_SIZE)
                sigma = float(rng.uniform(0.0, 0.8))
                if sigma > 0.1:
                    img = cv2.GaussianBlur(img, (0, 0), sigma)
                # the camera's noise, reduced by the window's downscaling (area averaging)
                img = img + rng.normal(0, plates.noise_std[view] / max(windows.image_px[view], 1.0), img.shape)
                if augment.chance(rng, cfg.jpeg_prob):
                    img = augment.compress(img, int(rng.integers(40, 91)))
                photos.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
            req = estimate_request(model, wrig, np.stack(photos), v, appearance, template)
            flow = OraclePredictor(gt_v)(req).flow.numpy()
            crops = _view_crops(net_cfg, req, flow, cfg, windows.image_px, rng)
            items += [_item(c, t, windows, view) for view, _, c in crops]
    return _stacked(items)


def _epe(net, data: dict) -> tuple[float, float]:
    """Mean end-point error (image px) of ``net`` and of predicting nothing over ``data``."""
    from mvcap.nets.displacement import endpoint_error
    from mvcap.nets.train import evaluate

    if not data:
        return float("nan"), float("nan")
    batch = {k: data[k] for k in ("photo", "render", "target", "mask")}
    ev = evaluate(net, {**batch, "window": data["px"]}, torch.device("cpu"), batch_size=32)
    tgt = data["target"]
    return ev["epe_full_px"], float(endpoint_error(torch.zeros_like(tgt), tgt, data["mask"], data["px"]))


def adapt_network(
    session_path: str | Path,
    cfg: AdaptConfig = AdaptConfig(),
    subject: Subject | None = None,
    weights: str | Path | None = None,
    frames: list[int] | None = None,
    progress: bool = True,
    label_refine=None,
):
    """Fine-tune the network in ``weights`` (default: the shipped one) on the capture
    ``session_path``, rendering ``subject`` (default: the session's) around its estimates
    (see the module docstring; ``label_refine``: the RefineConfig of ``source = "flow"``'s
    refinement, default ``configs/refine.toml``). Returns (the adapted
    :class:`~mvcap.nets.displacement.DisplacementNet`, :class:`AdaptResult`)."""
    from tqdm import tqdm

    from mvcap.capture import Session
    from mvcap.nets.displacement import training_loss
    from mvcap.nets.predictor import LearnedPredictor

    net = LearnedPredictor.load(weights, device="cpu").net
    source = cfg.source  # as asked: a flow label swaps cfg.source for its run below
    if cfg.confidence:
        net = net.with_confidence()
    if cfg.source == "flow":  # the label first: the frames adaptation will use, refined by flow
        with Session.open(session_path) as session:
            frames = _check_frames(session, frames)
            _, ok = _estimates(session, "init")
            stored = session.subject
        if subject is not None and stored is None:  # refinement reads the shape from the session
            with Session.open(session_path, "a") as session:
                session.write_subject(subject)
        elif subject is not None and (stored.name != subject.name or not np.allclose(stored.betas, subject.betas)):
            raise AdaptError(
                f"{session_path} holds subject {stored.name!r}, not {subject.name!r}: source = 'flow' refines the "
                f"capture with the subject stored in it; store {subject.name!r} first (`mvcap refine --subject "
                "FILE`), or adapt with --set source=init"
            )
        flow_labels(session_path, _spread([t for t in frames if ok[t]], cfg.max_frames), label_refine, progress)
        cfg = dataclasses.replace(cfg, source=FLOW_LABEL_RUN)
    threads = torch.get_num_threads()
    try:
        with Session.open(session_path) as session:
            subject = subject or session.subject
            if subject is None:
                raise AdaptError(
                    f"{session_path} has no registered subject and none was given: adaptation renders the "
                    "subject's appearance; register one with `mvcap register`"
                )
            frames = _check_frames(session, frames)
            _, ok = _estimates(session, cfg.source)
            usable = [t for t in frames if ok[t]]
            if not usable:
                raise AdaptError(
                    f"none of the {len(frames)} chosen frames of {session_path} has an estimate in {cfg.source!r}"
                )
            usable = _spread(usable, cfg.max_frames)
            k = cfg.val_every
            val = usable[k // 2 :: k] if k and len(usable) >= 2 * k else []
            train_frames = [t for t in usable if t not in set(val)]
            t0 = time.perf_counter()
            parts, composites = [], {}
            if cfg.route in ("self", "both"):
                parts.append(adaptation_samples(session, subject, train_frames, cfg, net.cfg, progress=progress))
            if cfg.route in ("composite", "both"):
                plates = background_plates(session, cfg.views, cfg.plate_frames, progress=progress)
                composites = composite_samples(session, subject, train_frames, cfg, net.cfg, plates, progress=progress)
                parts.append(composites)
            parts = [p for p in parts if p]
            data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
            # held out: the capture's own photos whatever the route (what refinement will see)
            held = adaptation_samples(session, subject, val, cfg, net.cfg) if val else {}
            sample_s = time.perf_counter() - t0
        # after the renderer: numba's OpenMP resets the count torch uses, and torch's threads
        # then fight numba's spinning ones (a step took 5x longer); set it again
        torch.set_num_threads(cfg.threads or threads)
        if not data:
            raise AdaptError(f"no usable training samples in {session_path}: the body is out of view in every frame")
        before, zero = _epe(net, held)
        n = len(data["photo"])
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        net.train()
        t1 = time.perf_counter()
        for step in tqdm(range(cfg.steps), desc="adapt: train", unit="step", disable=not progress):
            f = cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps)))
            for g in opt.param_groups:
                g["lr"] = cfg.lr * f
            idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
            preds, log_scale = net.forward_with_scale(data["photo"][idx], data["render"][idx])
            loss = training_loss(preds, log_scale, data["target"][idx], data["mask"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
        train_s = time.perf_counter() - t1
        net.eval()
        after, _ = _epe(net, held)
    finally:
        torch.set_num_threads(threads)
    res = AdaptResult(
        tuple(train_frames),
        tuple(val),
        n,
        len(held["photo"]) if held else 0,
        cfg.steps,
        sample_s,
        train_s,
        zero,
        before,
        after,
        len(composites["photo"]) if composites else 0,
        source,
    )
    return net, res


def adapt_subject(
    subject: Subject,
    session_path: str | Path,
    cfg: AdaptConfig = AdaptConfig(),
    weights: str | Path | None = None,
    frames: list[int] | None = None,
    progress: bool = True,
    label_refine=None,
) -> tuple[Subject, AdaptResult]:
    """:func:`adapt_network`, then the subject with the adapted network stored in it
    (``displacement_net``; where it came from in ``meta["adapted"]``)."""
    from mvcap.nets.train import weights_blob

    net, res = adapt_network(session_path, cfg, subject, weights, frames, progress, label_refine)
    record = {
        "session": str(Path(session_path).resolve()),
        "start_weights": str(weights) if weights else "shipped",
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "frames": [int(t) for t in frames] if frames is not None else None,
        "result": json.loads(json.dumps(dataclasses.asdict(res))),
    }
    buf = io.BytesIO()
    torch.save(weights_blob(net, {"adapted": record}), buf)
    meta = {**subject.meta, "adapted": record}
    return dataclasses.replace(subject, displacement_net=buf.getvalue(), meta=meta), res
