"""Displacement predictors: where does each rendered pixel of the current estimate lie in
the photo?

Every predictor answers the same request (photos and render passes of the current body
estimate in every view, all in the undistorted pinhole image space) with a per-pixel
displacement field ``flow`` (V, H, W, 2) in pixels, defined on rendered pixels
(``x_photo = x_render + flow``), and a ``confidence`` (V, H, W) in [0, 1] (0 off the
rendered silhouette or where the predictor does not trust itself).

* :class:`OraclePredictor` -- from ground truth, eq. 1-2 of the refinement paper: the
  per-vertex displacement between the projections of the true and the current mesh,
  interpolated over the rendered triangles. The upper bound for the fitting stage.
* :class:`FlowPredictor` -- classical optical flow (OpenCV DIS) from the shaded, textured
  render to the photo, with a forward-backward consistency check as confidence.
* The learned network (:mod:`mvcap.nets`) plugs in through the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import Tensor

from mvcap.cameras import Rig, project
from mvcap.correspond import interpolate_to_pixels
from mvcap.render import Fragments, RenderPasses

__all__ = [
    "Displacement",
    "PredictRequest",
    "DisplacementPredictor",
    "OraclePredictor",
    "FlowConfig",
    "FlowPredictor",
]


@dataclass(frozen=True)
class Displacement:
    """flow: (V, H, W, 2) pixels, render -> photo; confidence: (V, H, W) in [0, 1]."""

    flow: Tensor
    confidence: Tensor


@dataclass(frozen=True)
class PredictRequest:
    """What a predictor sees for one frame.

    photos: (V, H, W, 3) uint8 photos, undistorted into the pinhole image space;
    passes: render passes (V, H, W, C) of the current estimate (must include rgb and mask);
    fragments: the rasterizer output the passes came from; rig: the rig (its pinhole K/R/t
    were used to render); vertices_world: (N, 3) current mesh; faces (F, 3); image_px: (V,)
    image pixels per request pixel when the request is a scaled-down window of the images
    (None: 1, the images' own pixels).
    """

    photos: np.ndarray
    passes: RenderPasses
    fragments: Fragments
    rig: Rig
    vertices_world: Tensor
    faces: Tensor
    image_px: np.ndarray | None = None


class DisplacementPredictor(Protocol):
    name: str

    def __call__(self, request: PredictRequest) -> Displacement: ...


class OraclePredictor:
    """Ground-truth displacements (eq. 1-2): needs the true mesh of the frame."""

    name = "oracle"

    def __init__(self, gt_vertices_world: Tensor):
        self.gt_vertices_world = gt_vertices_world  # (N, 3)

    def __call__(self, request: PredictRequest) -> Displacement:
        rig = request.rig
        cur = project(rig, request.vertices_world.detach().to(torch.float64), distort=False)
        gt = project(rig, self.gt_vertices_world.detach().to(torch.float64), distort=False)
        per_vertex = (gt - cur).to(torch.float32)  # (V, N, 2)
        flow = interpolate_to_pixels(per_vertex, request.fragments, request.faces)
        return Displacement(flow=flow, confidence=request.fragments.mask.to(torch.float32))


@dataclass(frozen=True)
class FlowConfig:
    """Settings of the optical-flow predictor (TOML [flow])."""

    preset: str = "medium"  # DIS preset: ultrafast | fast | medium
    normalize: bool = True  # local contrast normalisation: robust to lighting differences
    normalize_sigma_px: float = 6.0
    margin_px: int = 32  # crop margin around the rendered person
    consistency_px: float = 2.0  # forward-backward error giving confidence exp(-1)
    background: str = "mean"  # render background: "mean" photo colour or "photo"


_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _to_gray_u8(image: np.ndarray, normalize: bool, sigma: float) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (H, W) uint8; optionally locally contrast-normalised."""
    gray = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
    if normalize:
        mean = cv2.GaussianBlur(gray, (0, 0), sigma)
        var = cv2.GaussianBlur((gray - mean) ** 2, (0, 0), sigma)
        gray = (gray - mean) / np.sqrt(var + 1e-4)
        gray = np.clip(gray * 40.0 + 128.0, 0, 255)
    else:
        gray = np.clip(gray * 255.0, 0, 255)
    return gray.astype(np.uint8)


def _warp(field: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``field`` (H, W, C) at x + flow(x) (bilinear)."""
    H, W = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    return cv2.remap(field, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class FlowPredictor:
    """DIS optical flow from the textured render to the photo, inside the silhouette."""

    name = "flow"

    def __init__(self, cfg: FlowConfig = FlowConfig()):
        if cfg.preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {cfg.preset!r}; use one of {sorted(_DIS_PRESETS)}")
        if cfg.background not in ("mean", "photo"):
            raise ValueError(f"flow background must be 'mean' or 'photo', got {cfg.background!r}")
        self.cfg = cfg
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[cfg.preset])

    def _view(self, photo: np.ndarray, rgb: np.ndarray, mask: np.ndarray, flow: np.ndarray, conf: np.ndarray) -> None:
        """One view's field into ``flow`` (H, W, 2) and ``conf`` (H, W), zeros beforehand."""
        cfg = self.cfg
        H, W = mask.shape
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))  # the box, not every pixel
        if len(rows) == 0:
            return
        y0, y1 = max(0, rows[0] - cfg.margin_px), min(H, rows[-1] + 1 + cfg.margin_px)
        x0, x1 = max(0, cols[0] - cfg.margin_px), min(W, cols[-1] + 1 + cfg.margin_px)
        photo_f = photo[y0:y1, x0:x1].astype(np.float32) / 255.0
        m = mask[y0:y1, x0:x1, None]
        if cfg.background == "photo":
            bg = photo_f
        else:
            bg = np.broadcast_to(photo_f.reshape(-1, 3).mean(0), photo_f.shape)
        render = np.array(bg, dtype=np.result_type(bg, rgb))
        np.copyto(render, rgb[y0:y1, x0:x1], where=m)
        a = _to_gray_u8(render, cfg.normalize, cfg.normalize_sigma_px)
        b = _to_gray_u8(photo_f, cfg.normalize, cfg.normalize_sigma_px)
        fw = self._dis.calc(a, b, None)
        bw = self._dis.calc(b, a, None)
        err = np.linalg.norm(fw + _warp(bw, fw), axis=-1)
        c = np.exp(-((err / cfg.consistency_px) ** 2)) * m[..., 0]
        flow[y0:y1, x0:x1] = fw * m
        conf[y0:y1, x0:x1] = c

    def __call__(self, request: PredictRequest) -> Displacement:
        # OpenCV's flow runs on the host: a request on a GPU comes down and its field goes up
        dev = request.fragments.mask.device
        rgb = request.passes.get("rgb").detach().cpu().numpy()
        mask = request.fragments.mask.cpu().numpy()
        photos = request.photos.cpu().numpy() if isinstance(request.photos, torch.Tensor) else request.photos
        flow, conf = np.zeros(mask.shape + (2,), np.float32), np.zeros(mask.shape, np.float32)
        for v in range(mask.shape[0]):  # each view fills its own slice: no per-view copy of the canvas
            self._view(photos[v], rgb[v], mask[v], flow[v], conf[v])
        return Displacement(torch.as_tensor(flow, device=dev), torch.as_tensor(conf, device=dev))
