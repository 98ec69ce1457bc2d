"""Overlays: the fitted body drawn over the photos, to see at a glance whether a fit worked.

Everything is drawn in each camera's undistorted pinhole image (the space the refinement
works in): the photo is undistorted with :func:`mvcap.render.undistort_images` and the body
is rendered with the rig's pinhole cameras, so mesh and photo line up exactly where the fit
is right. Images are RGB uint8 throughout.

- :func:`draw_overlay` blends a shaded body into one photo and outlines its silhouette.
- :func:`draw_arrows` draws a displacement field (render → photo) as arrows, as in the
  refinement paper's figures.
- :func:`body_overlays` renders a body in every view and overlays it.
- :func:`session_overlays` writes per-view PNGs (and optionally MP4s) for a results run,
  side by side with the initial estimate ("before | after").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from mvcap.body import BodyModel, load_body_model
from mvcap.cameras import Rig
from mvcap.render import canvas_size, render

__all__ = [
    "OverlayConfig",
    "OverlayOutputs",
    "draw_overlay",
    "draw_arrows",
    "label",
    "headlight",
    "body_overlays",
    "before_after",
    "predicted_displacement",
    "session_overlays",
]


@dataclass(frozen=True)
class OverlayConfig:
    """How overlays look. Colours are RGB 0-255."""

    alpha: float = 0.55  # opacity of the body over the photo
    body_color: tuple[int, int, int] = (120, 190, 255)
    init_color: tuple[int, int, int] = (255, 150, 110)  # the "before" body
    outline: bool = True
    outline_color: tuple[int, int, int] = (255, 235, 60)
    outline_px: int = 2
    arrow_step_px: int = 14  # one arrow per this many pixels on the silhouette
    arrow_color: tuple[int, int, int] = (60, 255, 120)
    arrow_min_px: float = 1.0  # shorter displacements are not drawn


@dataclass
class OverlayOutputs:
    """Files written by :func:`session_overlays`: pngs[view] -> one PNG per frame (frame order),
    videos[view] -> MP4 path (if requested), frames: the frame indices drawn."""

    frames: list[int]
    pngs: dict[str, list[Path]] = field(default_factory=dict)
    videos: dict[str, Path] = field(default_factory=dict)


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"{what} must be an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    return img


def draw_overlay(
    photo: np.ndarray,
    shaded: np.ndarray,
    mask: np.ndarray,
    cfg: OverlayConfig = OverlayConfig(),
    color: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Blend a rendered body into a photo.

    photo: (H, W, 3) uint8; shaded: (H, W) or (H, W, 1|3) float in [0, 1], the body's shading;
    mask: (H, W) bool silhouette. The body is tinted with ``color`` (default the config's
    body colour), alpha-blended, and its silhouette outlined. Returns (H, W, 3) uint8.
    """
    photo = _check_image(photo, "photo")
    H, W = photo.shape[:2]
    mask = np.asarray(mask, bool).reshape(H, W)
    shade = np.asarray(shaded, np.float32)
    if shade.ndim == 3:
        shade = shade.mean(-1)
    shade = shade.reshape(H, W)
    tint = np.asarray(color or cfg.body_color, np.float32)
    body = np.clip(shade[..., None] * tint[None, None] * 1.15, 0, 255)
    out = photo.astype(np.float32)
    a = float(np.clip(cfg.alpha, 0.0, 1.0))
    out[mask] = (1 - a) * out[mask] + a * body[mask]
    out = out.round().astype(np.uint8)
    if cfg.outline and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in cfg.outline_color), cfg.outline_px, cv2.LINE_AA)
    return out


def draw_arrows(
    image: np.ndarray, flow_px: np.ndarray, mask: np.ndarray, cfg: OverlayConfig = OverlayConfig()
) -> np.ndarray:
    """Draw a displacement field as arrows from rendered pixel to photo pixel.

    image: (H, W, 3) uint8; flow_px: (H, W, 2) pixels (x, y); mask: (H, W) bool where the field
    is defined (the rendered silhouette). Arrows sit on a regular grid of
    ``cfg.arrow_step_px``. Returns a new (H, W, 3) uint8 image.
    """
    out = _check_image(image, "image").copy()
    H, W = out.shape[:2]
    flow_px = np.asarray(flow_px, np.float32).reshape(H, W, 2)
    mask = np.asarray(mask, bool).reshape(H, W)
    s = max(int(cfg.arrow_step_px), 2)
    for y in range(s // 2, H, s):
        for x in range(s // 2, W, s):
            if not mask[y, x]:
                continue
            dx, dy = flow_px[y, x]
            if not np.isfinite(dx + dy) or np.hypot(dx, dy) < cfg.arrow_min_px:
                continue
            end = (int(round(x + dx)), int(round(y + dy)))
            cv2.arrowedLine(out, (x, y), end, cfg.arrow_color, 1, cv2.LINE_AA, tipLength=0.3)
    return out


def label(image: np.ndarray, text: str, scale: float = 0.55) -> np.ndarray:
    """Write ``text`` in the top-left corner (white on a dark band) and return a copy."""
    out = _check_image(image, "image").copy()
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (tw + 10, th + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (5, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def headlight(normal_cam: np.ndarray) -> np.ndarray:
    """Brightness (..., H, W) in [0.35, 1] of surfaces lit from the camera, from the normal
    pass (..., H, W, 3) in camera coordinates (facing the camera: n_z < 0)."""
    return 0.35 + 0.65 * np.clip(-normal_cam[..., 2], 0.0, 1.0)


def _shade_body(model: BodyModel, pinhole: Rig, pose_rotvecs, betas, transl) -> tuple[np.ndarray, np.ndarray]:
    """Render a grey, headlight-shaded body: shading (V, H, W) float and mask (V, H, W) bool."""
    pose = torch.as_tensor(np.asarray(pose_rotvecs, np.float32)).reshape(1, -1, 3)
    b = torch.as_tensor(np.asarray(betas, np.float32)).reshape(1, -1)
    tr = torch.as_tensor(np.asarray(transl, np.float32)).reshape(1, 3)
    with torch.no_grad():
        verts = model(pose, b, tr).vertices[0]
    _, passes = render(pinhole, verts, model.faces, passes=("normal", "mask"))
    normal = passes.get("normal").numpy()
    mask = passes.get("mask").numpy()[..., 0] > 0
    shade = headlight(normal)
    return np.where(mask, shade, 0.0), mask


def body_overlays(
    model: BodyModel,
    rig: Rig,
    photos_undistorted: np.ndarray,
    pose_rotvecs,
    betas,
    transl,
    cfg: OverlayConfig = OverlayConfig(),
    color: tuple[int, int, int] | None = None,
    flow_px: np.ndarray | None = None,
) -> np.ndarray:
    """Overlay one body on every view.

    rig: the capture rig (its pinhole version is used); photos_undistorted: (V, H, W, 3) uint8
    (see :func:`mvcap.render.undistort_images`); pose_rotvecs (24, 3), betas (K,), transl (3,).
    flow_px: optional (V, H, W, 2) displacement field to draw as arrows.
    Returns (V, H, W, 3) uint8.
    """
    photos = np.asarray(photos_undistorted)
    if photos.ndim != 4 or photos.shape[0] != len(rig):
        raise ValueError(f"photos must have shape (V={len(rig)}, H, W, 3), got {photos.shape}")
    shade, mask = _shade_body(model, rig.without_distortion(), pose_rotvecs, betas, transl)
    out = []
    for v in range(len(rig)):
        img = draw_overlay(photos[v], shade[v], mask[v], cfg, color)
        if flow_px is not None:
            img = draw_arrows(img, flow_px[v], mask[v], cfg)
        out.append(img)
    return np.stack(out)


def before_after(
    model: BodyModel,
    rig: Rig,
    photos_undistorted: np.ndarray,
    before: tuple,
    after: tuple,
    cfg: OverlayConfig = OverlayConfig(),
    before_flow_px: np.ndarray | None = None,
) -> np.ndarray:
    """Side by side per view: the ``before`` body (pose, betas, transl) | the ``after`` body.
    before_flow_px: optional (V, H, W, 2) displacement field predicted on the ``before``
    render, drawn as arrows on that half. Returns (V, H, 2W, 3) uint8; a missing (NaN) body
    leaves its half as the bare photo."""
    halves = []
    for params, color, text, flow in (
        (before, cfg.init_color, "before", before_flow_px),
        (after, cfg.body_color, "after", None),
    ):
        if params is None or not all(np.isfinite(np.asarray(p)).all() for p in params):
            imgs = np.asarray(photos_undistorted).copy()
        else:
            imgs = body_overlays(model, rig, photos_undistorted, *params, cfg=cfg, color=color, flow_px=flow)
        halves.append(np.stack([label(img, f"{rig.names[v]} {text}") for v, img in enumerate(imgs)]))
    return np.concatenate(halves, axis=2)


def view_strip(image: np.ndarray, rig: Rig, v: int, halves: int = 1) -> np.ndarray:
    """View ``v``'s own pixels of an overlay drawn on the rig's common canvas (cameras of
    different sizes, see :mod:`mvcap.render`): image (Hc, halves * Wc, 3) -> (H_v, halves * W_v, 3)
    (``halves`` = 2 for a :func:`before_after` strip). Unchanged when the view fills the canvas."""
    Wc, Hc = canvas_size(rig)
    w, h = rig[v].image_size
    if (w, h) == (Wc, Hc):
        return image
    return np.concatenate([image[:h, k * Wc : k * Wc + w] for k in range(halves)], 1)


def predicted_displacement(
    model: BodyModel, rig: Rig, photos_undistorted: np.ndarray, params: tuple, predictor, subject=None
) -> np.ndarray:
    """The displacement field ``predictor`` sees between the render of ``params`` (pose, betas,
    transl) and the photos: (V, H, W, 2) pixels, NaN off the rendered body."""
    from mvcap.refine import estimate_request, subject_appearance

    pinhole = rig.without_distortion()
    pose, betas, transl = (torch.as_tensor(np.asarray(p, np.float32)) for p in params)
    with torch.no_grad():
        verts = model(pose.reshape(1, -1, 3), betas.reshape(1, -1), transl.reshape(1, 3)).vertices[0]
    req = estimate_request(model, pinhole, photos_undistorted, verts, subject_appearance(model, subject))
    disp = predictor(req)
    flow = np.asarray(disp.flow, np.float32)
    return np.where(req.fragments.mask.numpy()[..., None], flow, np.nan)


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def session_overlays(
    session_path: str | Path,
    run_name: str,
    out_dir: str | Path,
    frames: Sequence[int] | None = None,
    views: Sequence[str] | None = None,
    compare_init: bool = True,
    video: bool = False,
    cfg: OverlayConfig = OverlayConfig(),
    model: BodyModel | None = None,
    progress: bool = True,
    arrows: str | None = None,
) -> OverlayOutputs:
    """Write overlays of a results run: ``<out_dir>/<view>/frame_<t>.png`` per view and frame
    (before | after when ``compare_init`` and the session has initial estimates), plus
    ``<out_dir>/<view>.mp4`` when ``video``. ``frames`` default: every finished frame.
    arrows: a predictor name ("flow", "learned", "oracle") whose displacement field on the
    initial estimate's render is drawn as arrows on the "before" half."""
    from tqdm import tqdm

    from mvcap.capture import Session, SessionError
    from mvcap.refine import load_frame_inputs

    model = model or load_body_model()
    out_dir = Path(out_dir)
    with Session.open(session_path) as s:
        res = s.read_results(run_name)
        done = np.flatnonzero(res.done)
        if frames is None:
            frames = done.tolist()
        frames = [int(t) for t in frames]
        missing = [t for t in frames if not (0 <= t < len(res.done) and res.done[t])]
        if missing:
            raise SessionError(
                f"frames {missing[:10]} of run {run_name!r} have no result (done frames: {_ranges(done) or 'none'})"
            )
        rig = s.rig if views is None else s.rig.subset(list(views))
        predictor = None
        if arrows:
            from mvcap.refine import RefineConfig, make_predictor

            if arrows == "oracle":
                if not s.has_ground_truth:
                    raise SessionError(f"{session_path} has no ground truth for arrows='oracle'; use flow or learned")
                gt = s.read_ground_truth()
            elif arrows not in ("flow", "learned"):
                raise SessionError(f"arrows must be 'flow', 'learned' or 'oracle', got {arrows!r}")
            if arrows != "oracle":
                predictor = make_predictor(arrows, RefineConfig(predictor=arrows), subject=s.subject)
        out = OverlayOutputs(frames=frames)
        writers = {}
        try:
            for t in tqdm(frames, desc="overlays", unit="frame", disable=not progress):
                inputs = load_frame_inputs(s, t, views)
                photos = inputs.photos
                after = (res.pose_rotvecs[t], res.betas[t], res.transl[t])
                if compare_init:
                    before = (inputs.init.pose_rotvecs[0], res.betas[t], inputs.init.transl[0])
                    flow = None
                    if arrows and inputs.has_init:
                        if arrows == "oracle":
                            from mvcap.displace import OraclePredictor

                            with torch.no_grad():
                                predictor = OraclePredictor(model(**gt.slice(t).to_torch()).vertices[0])
                        flow = predicted_displacement(model, rig, photos, before, predictor, s.subject)
                    imgs = before_after(model, rig, photos, before, after, cfg, flow)
                else:
                    imgs = body_overlays(model, rig, photos, *after, cfg=cfg)
                for v, name in enumerate(rig.names):
                    img = view_strip(imgs[v], rig, v, halves=2 if compare_init else 1)
                    img = label(img, f"frame {t}") if not compare_init else img
                    out.pngs.setdefault(name, []).append(_write_png(out_dir / name / f"frame_{t:06d}.png", img))
                    if video:
                        if name not in writers:
                            path = out_dir / f"{name}.mp4"
                            h, w = img.shape[:2]
                            writers[name] = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), s.fps, (w, h))
                            if not writers[name].isOpened():
                                raise OSError(f"OpenCV cannot write {path} (mp4v codec missing?)")
                            out.videos[name] = path
                        writers[name].write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        finally:
            for w in writers.values():
                w.release()
    return out


def _ranges(idx: np.ndarray) -> str:
    """[0,1,2,5,6] -> '0-2, 5-6'."""
    idx = np.asarray(idx, int)
    if idx.size == 0:
        return ""
    parts, start = [], idx[0]
    for a, b in zip(idx[:-1], idx[1:]):
        if b != a + 1:
            parts.append(f"{start}-{a}" if a != start else f"{start}")
            start = b
    parts.append(f"{start}-{idx[-1]}" if idx[-1] != start else f"{start}")
    return ", ".join(parts)
