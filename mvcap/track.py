"""Follow one chosen person through a multi-person capture: detection inside a tracked 3D box.

Studios are rarely empty: other actors, crew and bystanders walk through the views, and a
single-person detector (MediaPipe Pose) picks whichever person it likes, a different one in
each camera. ``detect_subject`` keeps detection on one person:

1. the subject is chosen by a 3D point (``near``; default: the rig centre, the point closest
   to every camera's optical axis) or by a pixel in one view (``pixel``: the person whose
   hips are there);
2. per frame, an upright box around the subject's 3D hips (up = the cameras' mean image-up
   direction) is projected into each view and the detector runs on that crop only; a
   detection whose hips land farther than ``max_offset`` x the crop's height from the
   projected centre is another person: they are painted over and the detector asked again;
3. the frame's detections are triangulated (robustly: a view that still caught someone else
   is an outlier) and the centre moves to the subject's new mid-hip point for the next frame.

Detections are stored as :func:`mvcap.detect.detect_session` stores them (full-image pixels,
full-size masks), so every later stage is unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvcap.cameras import Rig, pixel_rays, project
from mvcap.config import ConfigError
from mvcap.detect import KEYPOINT_FORMAT, MEDIAPIPE_POSE_33, DetectConfig, DetectSummary, PoseDetector
from mvcap.triangulate import TriangulateConfig, triangulate_keypoints

__all__ = ["TrackConfig", "SubjectSeed", "rig_centre", "up_direction", "crop_window", "detect_subject", "parse_seed"]

_HIPS = (MEDIAPIPE_POSE_33.index("left_hip"), MEDIAPIPE_POSE_33.index("right_hip"))


@dataclass(frozen=True)
class TrackConfig:
    """Subject tracking settings (``[detect.track]``)."""

    half_width_m: float = 0.55  # the box around the subject: this far to every side of the hips,
    below_m: float = 1.05  # ... this far down (to the soles)
    above_m: float = 1.15  # ... and up (over the head and raised hands)
    max_offset: float = 0.15  # hips farther than this x crop height from the centre: another person
    retries: int = 2  # another person detected: blank them out and detect again, this many times
    pad: float = 0.1  # crop margin, fraction of the crop's size
    depths_m: tuple[float, float] = (1.0, 12.0)  # search range along a pixel seed's ray

    def __post_init__(self):
        if min(self.half_width_m, self.below_m, self.above_m, self.max_offset) <= 0 or self.pad < 0:
            raise ConfigError("the box sizes and max_offset must be > 0 and pad >= 0")


@dataclass(frozen=True)
class SubjectSeed:
    """How the subject is chosen: ``near`` (3,) world point, or ``pixel`` (view, x, y)."""

    near: tuple[float, float, float] | None = None
    pixel: tuple[str, float, float] | None = None


def parse_seed(text: str) -> SubjectSeed:
    """``centre`` | ``near:X,Y,Z`` (metres, world) | ``pixel:CAM:X,Y`` -> :class:`SubjectSeed`."""
    text = (text or "centre").strip()
    try:
        if text in ("centre", "center"):
            return SubjectSeed()
        kind, _, rest = text.partition(":")
        if kind == "near":
            x, y, z = (float(v) for v in rest.split(","))
            return SubjectSeed(near=(x, y, z))
        if kind == "pixel":
            cam, _, xy = rest.rpartition(":")
            x, y = (float(v) for v in xy.split(","))
            if cam:
                return SubjectSeed(pixel=(cam, x, y))
    except ValueError:
        pass
    raise ConfigError(
        f"subject {text!r}: use 'centre' (the person nearest the rig centre), 'near:X,Y,Z' (a world point in "
        "metres) or 'pixel:CAM:X,Y' (the person at that pixel of camera CAM)"
    )


def rig_centre(rig: Rig) -> np.ndarray:
    """(3,) the point closest (least squares) to every camera's optical axis."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for cam in rig:
        c = np.asarray(cam.center_world, np.float64)
        d = np.asarray(cam.R_world2cam, np.float64)[2]  # optical axis in the world
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    return np.linalg.lstsq(A, b, rcond=None)[0]


def up_direction(rig: Rig) -> np.ndarray:
    """(3,) the world's up direction as the rig sees it: the mean of the cameras' image-up
    axes (studio cameras stand upright, whatever the world's convention: Y-up, Z-up)."""
    up = -np.mean([np.asarray(cam.R_world2cam, np.float64)[1] for cam in rig], axis=0)
    return up / np.linalg.norm(up)


def crop_window(camera: Rig, centre: np.ndarray, cfg: TrackConfig, up: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel window (x0, y0, x1, y1), exclusive ends, of the upright box around the subject's
    hips ``centre`` in a one-view rig; None when the box is behind the camera or off the image."""
    a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    w = cfg.half_width_m
    corners = np.array(
        [
            centre + sa * w * a + sb * w * b + h * up
            for sa in (-1, 1)
            for sb in (-1, 1)
            for h in (-cfg.below_m, cfg.above_m)
        ]
    )
    cam = camera[0]
    z = (corners @ np.asarray(cam.R_world2cam, np.float64).T + np.asarray(cam.t_world2cam, np.float64))[:, 2]
    if (z <= 0.1).any():
        return None
    uv = project(camera, torch.as_tensor(corners))[0].numpy()
    (x0, y0), (x1, y1) = uv.min(0), uv.max(0)
    px, py = cfg.pad * (x1 - x0), cfg.pad * (y1 - y0)
    W, H = cam.image_size
    x0, y0 = int(max(0, np.floor(x0 - px))), int(max(0, np.floor(y0 - py)))
    x1, y1 = int(min(W, np.ceil(x1 + px))), int(min(H, np.ceil(y1 + py)))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    return x0, y0, x1, y1


def _detect_in_window(detector: PoseDetector, image: np.ndarray, window, centre_px, cfg: TrackConfig):
    """Keypoints (K, 3) and full-size mask of the person in ``window`` whose hips are near
    ``centre_px``; no person (confidence 0) otherwise. A detector that finds someone else is
    asked again with that person painted over (``retries`` times)."""
    H, W = image.shape[:2]
    kp = np.full((len(MEDIAPIPE_POSE_33), 3), np.nan, np.float32)
    kp[:, 2] = 0.0
    mask = np.zeros((H, W), np.float32)
    if window is None:
        return kp, mask
    x0, y0, x1, y1 = window
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    fill = np.median(crop.reshape(-1, 3), axis=0).astype(np.uint8)
    for _ in range(cfg.retries + 1):
        k, m = detector(crop)
        if not (k[:, 2] > 0).any():
            break
        hips_full = k[list(_HIPS), :2] + (x0, y0)  # crop pixels -> image pixels
        near = centre_px is None or not np.isfinite(hips_full).all()
        near = near or np.linalg.norm(hips_full.mean(0) - centre_px) <= cfg.max_offset * (y1 - y0)
        if near:
            k = k.copy()
            k[:, 0] += x0
            k[:, 1] += y0
            if m is not None:
                mask[y0:y1, x0:x1] = m
            return k, mask
        crop = crop.copy()  # someone else: paint them over and look again
        other = m > 0.5 if m is not None and (m > 0.5).sum() > 50 else None
        if other is None:
            ok = (k[:, 2] > 0.3) & np.isfinite(k[:, :2]).all(1)
            if ok.sum() < 3:
                break
            (u0, v0), (u1, v1) = k[ok, :2].min(0), k[ok, :2].max(0)
            du, dv = 0.15 * (u1 - u0), 0.1 * (v1 - v0)
            other = np.zeros(crop.shape[:2], bool)
            other[max(0, int(v0 - dv)) : int(v1 + dv) + 1, max(0, int(u0 - du)) : int(u1 + du) + 1] = True
        crop[other] = fill
    return kp, mask


def _subject_centre(rig: Rig, kp: np.ndarray, tcfg: TriangulateConfig) -> np.ndarray | None:
    """Mid-hip 3D point from one frame's detections (V, K, 3) (mean of all points if no hips)."""
    if (kp[..., 2] > tcfg.min_confidence).any(axis=1).sum() < 2:
        return None
    tri = triangulate_keypoints(rig, kp[None], tcfg)
    X = tri.points_world[0]
    hips = X[list(_HIPS)]
    if np.isfinite(hips).all():
        return hips.mean(0)
    ok = np.isfinite(X).all(1)
    return X[ok].mean(0) if ok.sum() >= 4 else None


def _seed_from_pixel(rig: Rig, images: np.ndarray, seed, cfg: TrackConfig, dcfg: DetectConfig) -> np.ndarray:
    """The 3D centre of the person at pixel (view, x, y): walk along that pixel's ray and keep
    the depth at which the other views detect a person whose hips project there best."""
    view, x, y = seed
    if view not in rig.names:
        raise ConfigError(f"subject pixel: unknown camera {view!r}; this rig has {list(rig.names)}")
    v = rig.index(view)
    o, d = pixel_rays(rig.subset([view]), torch.tensor([[[x, y]]], dtype=torch.float64))
    o, d = o.reshape(3).numpy(), d.reshape(3).numpy()
    best, best_score = None, (0, np.inf)
    up = up_direction(rig)
    with PoseDetector(_static(dcfg)) as det:
        for depth in np.arange(cfg.depths_m[0], cfg.depths_m[1], 0.25):
            P = o + depth * d
            errs = []
            for u in range(len(rig)):
                if u == v:
                    continue
                cam = rig.subset([rig.names[u]])
                win = crop_window(cam, P, cfg, up)
                c_px = project(cam, torch.as_tensor(P[None]))[0, 0].numpy()
                k, _ = _detect_in_window(det, images[u], win, c_px, cfg)
                hips = k[list(_HIPS), :2]
                if win is not None and np.isfinite(hips).all():
                    errs.append(np.linalg.norm(hips.mean(0) - c_px) / (win[3] - win[1]))
            # most views agreeing first (a lone view can match anyone on its epipolar line)
            score = (-len(errs), float(np.mean(errs)) if errs else np.inf)
            if errs and score < best_score:
                best, best_score = P, score
    if best is None:
        raise ConfigError(f"no person found along the ray of pixel ({x:.0f}, {y:.0f}) in {view} in the other views")
    return best


def _static(cfg: DetectConfig) -> DetectConfig:
    from dataclasses import replace

    # crops move and change size from frame to frame: MediaPipe's video tracker would follow
    # its previous ROI in crop coordinates, so every crop is detected on its own
    return replace(cfg, static_image_mode=True, smooth_landmarks=False, smooth_segmentation=False)


def detect_subject(
    path: str | Path,
    seed: SubjectSeed = SubjectSeed(),
    cfg: DetectConfig = DetectConfig(),
    track: TrackConfig = TrackConfig(),
    triangulate: TriangulateConfig = TriangulateConfig(),
    frames=None,
    overwrite: bool = False,
    progress: bool = True,
) -> DetectSummary:
    """Detect the chosen subject's keypoints and mask in every view of a session, frame by frame
    in order, inside the 3D box that follows them (module doc). Replaces stored detections
    when ``overwrite``, else resumes after the last detected frame."""
    from tqdm import tqdm

    from mvcap.capture import Session, SessionError

    with Session.open(path, mode="a") as s:
        if overwrite:
            s.delete_detections()
        elif s.has_detections and s.keypoint_format != KEYPOINT_FORMAT:
            raise SessionError(f"{path} already holds {s.keypoint_format!r} detections; pass --overwrite")
        rig = s.rig
        written = s.frames_written
        todo = np.flatnonzero(written) if frames is None else np.asarray(list(frames), np.int64)
        done = s.detections_written
        skipped = int(done[todo].sum()) if todo.size else 0
        centre = None
        if skipped and not overwrite:  # resume: restart from the last detected frame's subject
            last = int(todo[done[todo]][-1])
            centre = _subject_centre(rig, s.read_keypoints([last])[0], triangulate)
        todo = todo[~done[todo]] if todo.size else todo
        V = len(rig)
        up = up_direction(rig)
        found = np.zeros((len(todo), V), bool)
        seconds, images_seen = 0.0, 0
        with PoseDetector(_static(cfg)) as det:
            for i, t in enumerate(tqdm(todo, desc="detect subject", unit="frame", disable=not progress)):
                imgs = s.read_frame(int(t))
                if centre is None:
                    if seed.pixel is not None:
                        centre = _seed_from_pixel(rig, imgs, seed.pixel, track, cfg)
                    else:
                        centre = np.asarray(seed.near, np.float64) if seed.near is not None else rig_centre(rig)
                for _pass in range(2 if i == 0 else 1):  # the first frame: detect, re-centre, detect again
                    kps, masks = [], []
                    for v in range(V):
                        cam = rig.subset([rig.names[v]])
                        win = crop_window(cam, centre, track, up)
                        c_px = project(cam, torch.as_tensor(centre[None]))[0, 0].numpy() if win is not None else None
                        t0 = time.perf_counter()
                        k, m = _detect_in_window(det, imgs[v], win, c_px, track)
                        seconds += time.perf_counter() - t0
                        images_seen += 1
                        kps.append(k)
                        masks.append(m)
                    kp = np.stack(kps)
                    new_centre = _subject_centre(rig, kp, triangulate)
                    if new_centre is not None:
                        centre = new_centre
                found[i] = kp[:, :, 2].max(1) > 0
                mask_arr = [np.round(m * 255).astype(np.uint8) for m in masks] if cfg.masks else None  # per-view sizes
                s.write_detections(int(t), kp, mask_arr, keypoint_format=KEYPOINT_FORMAT)
    return DetectSummary(todo, found, skipped, 1000.0 * seconds / max(images_seen, 1))
