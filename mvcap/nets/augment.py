"""What real cameras, clothes and rooms add to a photo, beyond the synthetic studio's image
formation (:func:`mvcap.synth.render_frame` already draws lighting, exposure, white balance,
vignetting, lens blur and sensor noise).

Pure functions on one photo (H, W, 3), float32 in 8-bit levels unless said otherwise; ``rng``
is a ``numpy.random.Generator``. Used by the training data (:mod:`mvcap.nets.data`) so the
network learns to ignore them:

- :func:`compress`: a JPEG round trip, the block and chroma artefacts of video codecs;
- :func:`motion_blur`: a straight blur streak (the subject or the camera moved);
- :func:`loose_layer`: hair and loose clothing, patches beyond the body's silhouette coloured
  like the nearest body pixel (the body model has no hair, skirts or sleeves);
- :func:`clutter`: shapes in the room: behind the people, or in front of them (an occluder:
  the body is only partly seen);
- :func:`over`: composite one layer over a photo (for other people in the shot).

None of them moves the body, so the target displacement field stays what it was.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .displacement import extend_nearest

__all__ = ["chance", "compress", "motion_blur", "loose_layer", "clutter", "over", "LOOSE_PATCHES", "LOOSE_SIZE"]

# hair and loose clothing: patches per person, and their size x the person's pixel height
LOOSE_PATCHES = (1, 4)
LOOSE_SIZE = (0.04, 0.12)


def chance(rng: np.random.Generator, prob: float) -> bool:
    """True with ``prob``; draws nothing when ``prob`` is 0, so configs without an
    augmentation keep their random streams (and samples) as they were."""
    return prob > 0 and rng.random() < prob


def compress(photo: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-encode and decode ``photo`` (H, W, 3) at ``quality`` (1-100). Returns float32."""
    img = np.clip(np.rint(photo), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(np.clip(quality, 1, 100))])
    if not ok:  # never seen; the photo is then left as it was
        return photo.astype(np.float32)
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32)


def motion_blur(photo: np.ndarray, length_px: float, angle_rad: float) -> np.ndarray:
    """``photo`` blurred along a straight streak ``length_px`` long at ``angle_rad`` (image x
    towards y). Streaks under a pixel leave it unchanged."""
    if length_px < 1.0:
        return photo.astype(np.float32)
    k = int(math.ceil(length_px)) | 1
    kernel = np.zeros((k, k), np.float32)
    c, h = (k - 1) / 2.0, length_px / 2.0
    dx, dy = math.cos(angle_rad), math.sin(angle_rad)
    for t in np.linspace(-h, h, 4 * k):
        kernel[int(round(c + t * dy)), int(round(c + t * dx))] += 1.0
    return cv2.filter2D(photo.astype(np.float32), -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def _blob(shape, centre, radii, angle_rad: float, rng, edge_px: float = 1.0) -> np.ndarray:
    """A soft-edged ellipse with a wobbly outline: alpha (H, W) float32 in [0, 1]."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    x, y = xx - centre[0], yy - centre[1]
    ca, sa = math.cos(angle_rad), math.sin(angle_rad)
    u, v = (ca * x + sa * y) / radii[0], (-sa * x + ca * y) / radii[1]
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    wobble = 1.0 + sum(rng.uniform(0, 0.15) * np.cos(n * theta + rng.uniform(0, 2 * np.pi)) for n in (2, 3, 5))
    dist_px = (wobble - r) * min(radii)
    return np.clip(dist_px / max(edge_px, 1e-3) + 0.5, 0, 1).astype(np.float32)


def over(photo: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``layer`` (H, W, 3) composited over ``photo`` with ``alpha`` (H, W) in [0, 1]."""
    a = alpha[..., None]
    return (photo * (1 - a) + layer * a).astype(np.float32)


def loose_layer(
    photo: np.ndarray, person: np.ndarray, rng, patches: int, size_frac: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Hair and loose clothing: ``patches`` soft blobs on the silhouette's outline, of
    ``size_frac`` (lo, hi) x the person's pixel height, filled beyond the silhouette with the
    nearest body pixel's colour under a smooth shade. person (H, W) bool: the body's pixels.
    Returns (photo, alpha (H, W) of what was added)."""
    alpha_all = np.zeros(person.shape, np.float32)
    if patches < 1 or not person.any():
        return photo.astype(np.float32), alpha_all
    ys, xs = np.nonzero(person)
    height = float(ys.max() - ys.min() + 1)
    outline = np.argwhere(person & ~cv2.erode(person.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool))
    fill = extend_nearest(photo.astype(np.float32), person)
    H, W = person.shape
    out = photo.astype(np.float32)
    for _ in range(patches):
        # hair sits on top of the head: the top of the outline half the time
        if rng.random() < 0.5:
            top = outline[outline[:, 0] <= outline[:, 0].min() + 0.05 * height]
            cy, cx = top[rng.integers(len(top))]
        else:
            cy, cx = outline[rng.integers(len(outline))]
        size = float(rng.uniform(*size_frac)) * height
        radii = (size * rng.uniform(0.5, 1.0), size * rng.uniform(0.3, 0.7))
        a = _blob((H, W), (float(cx), float(cy)), radii, float(rng.uniform(0, np.pi)), rng)
        a *= ~person  # only beyond the silhouette: the body's own pixels stay
        shade = np.float32(rng.uniform(0.6, 1.1))
        out = over(out, fill * shade, a)
        alpha_all = np.maximum(alpha_all, a)
    return out, alpha_all


def clutter(
    photo: np.ndarray, rng, shapes: int, size_frac: tuple[float, float], textures=(), behind: np.ndarray | None = None
) -> np.ndarray:
    """``shapes`` objects (soft ellipses and boxes, plain colour with a gradient, or a patch of
    one of ``textures`` (h, w, 3) arrays) of ``size_frac`` (lo, hi) x the image height. With
    ``behind`` (H, W) alpha of what stands in front of them (the people), they are placed behind
    it; without, over everything (occluders)."""
    H, W = photo.shape[:2]
    out = photo.astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for _ in range(shapes):
        size = float(rng.uniform(*size_frac)) * H
        centre = (float(rng.uniform(0, W)), float(rng.uniform(0, H)))
        radii = (size * rng.uniform(0.3, 1.0), size * rng.uniform(0.3, 1.0))
        angle = float(rng.uniform(0, np.pi))
        if rng.random() < 0.5:
            a = _blob((H, W), centre, radii, angle, rng, edge_px=0.8)
        else:  # a box: hard, straight edges
            ca, sa = math.cos(angle), math.sin(angle)
            u = (ca * (xx - centre[0]) + sa * (yy - centre[1])) / radii[0]
            v = (-sa * (xx - centre[0]) + ca * (yy - centre[1])) / radii[1]
            a = np.clip((1 - np.maximum(np.abs(u), np.abs(v))) * min(radii) + 0.5, 0, 1).astype(np.float32)
        if textures and rng.random() < 0.5:
            tex = np.asarray(textures[int(rng.integers(len(textures)))], np.float32)
            layer = cv2.resize(tex, (W, H), interpolation=cv2.INTER_LINEAR)
            layer = np.roll(layer, (int(rng.integers(H)), int(rng.integers(W))), axis=(0, 1))
        else:
            g = rng.uniform(-0.3, 0.3, 2) / max(H, W)
            ramp = 1 + g[0] * (xx - centre[0]) + g[1] * (yy - centre[1])
            layer = rng.uniform(0, 255, 3).astype(np.float32) * ramp[..., None]
        if behind is not None:
            a = a * (1 - behind)
        out = over(out, layer, a)
    return out
