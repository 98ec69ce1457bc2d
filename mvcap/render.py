"""Rasterization and render passes.

Everything here renders into the *undistorted pinhole image* of each camera: the rig's
``K``, ``R_world2cam``, ``t_world2cam`` and image size, ignoring lens distortion. Bring
photos into the same image space with :func:`undistort_images` so rendered and real
pixels line up.

Cameras of different sizes: per-view arrays (V, H, W, ...) of such a rig are on a common
canvas (:func:`canvas_size`: the largest width and height), each view's image in its
top-left corner and 0 (empty) beyond it. Padding at the right and bottom moves no pixel, so
``K`` is unchanged. :func:`rasterize` renders each group of equal-sized views at its own
size and places it on the canvas; :func:`pad_views` brings per-view photos or masks onto it.

Conventions (those of :mod:`mvcap.cameras`): OpenCV pinhole, ``x_cam = R x_world + t``,
camera looks down +Z, +X right, +Y down; pixel ``(u, v)`` has its origin at the *centre*
of the top-left pixel, and fragments are sampled at pixel centres (integer ``(u, v)``).

Rasterizer (:func:`rasterize`)
    Produces :class:`Fragments`: the visible face per pixel, its perspective-correct
    barycentric coordinates, camera-space depth and a mask. Not differentiable.

    * ``cpu`` backend: a numba z-buffer. Each triangle is rasterized in *homogeneous*
      pixel space (Olano & Greer 1997): with ``P_i = K x_cam_i`` the edge function of the
      edge (a, b) at pixel (u, v) is ``(P_a x P_b) . (u, v, 1)``. Its value is
      proportional to the perspective-correct barycentric coordinate of the opposite
      vertex, and the test "all three edge functions share the sign of det(P0, P1, P2)"
      selects exactly the pixel rays that hit the triangle *in front of* the camera. So
      triangles crossing the camera plane need no clipping and never wrap around; pixels
      whose hit lies closer than ``near`` are dropped (a near plane at ``z = near``).
    * Fill rule: a pixel whose centre lies exactly on an edge is decided by a symbolic
      perturbation of its ray (a "top-left" rule in homogeneous space). An edge shared
      by two triangles is evaluated with bit-identical, sign-flipped arithmetic in both,
      so a closed mesh has no cracks and no double coverage (up to rays within ~1e-12 px
      of a projected vertex).
    * No back-face culling; the nearest surface wins (ties: the lower face index).
    * ``nvdiffrast`` backend (CUDA, optional extra ``gpu``): the same camera model
      expressed as an OpenGL clip-space transform; see :func:`opencv_to_clip`.

Render passes (:func:`render_passes`)
    Channels-last float32 images of the visible surface: shaded ``rgb``, ``albedo``,
    ``depth``, camera-space ``normal``, ``template`` (position on the neutral rest mesh,
    the refinement paper's "unique vertex colour" pass) and ``mask``. Empty pixels are 0.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .cameras import Camera, Rig

__all__ = [
    "Fragments",
    "Light",
    "RenderPasses",
    "PASS_CHANNELS",
    "rasterize",
    "render_passes",
    "render",
    "coverage_count",
    "undistort_images",
    "canvas_size",
    "pad_views",
    "opencv_to_clip",
    "nvdiffrast_available",
    "vertex_normals",
]

DEFAULT_NEAR = 1e-3  # metres
DEFAULT_FAR = 1e3  # metres (nvdiffrast only; the cpu backend has no far plane)
DEFAULT_ALBEDO = 0.7  # grey albedo when neither a texture nor vertex colours are given

PASS_CHANNELS: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb_r", "rgb_g", "rgb_b"),
    "albedo": ("albedo_r", "albedo_g", "albedo_b"),
    "depth": ("depth",),
    "normal": ("normal_x", "normal_y", "normal_z"),
    "template": ("template_x", "template_y", "template_z"),
    "mask": ("mask",),
}


# ==========================================================================================
# data types
# ==========================================================================================
@dataclass(frozen=True)
class Fragments:
    """What the rasterizer saw at every pixel centre, per view (leading batch dims kept).

    face_ids: (..., V, H, W) int64, index of the visible face, -1 where empty.
    bary: (..., V, H, W, 3) float32 perspective-correct barycentric coordinates of the
        visible point w.r.t. ``faces[face_id]`` (sum to 1; 0 where empty).
    depth: (..., V, H, W) float32 camera-space z in metres (0 where empty).
    mask: (..., V, H, W) bool, ``face_ids >= 0``.
    """

    face_ids: Tensor
    bary: Tensor
    depth: Tensor
    mask: Tensor

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.face_ids.shape[-1]), int(self.face_ids.shape[-2])

    @property
    def num_views(self) -> int:
        return int(self.face_ids.shape[-3])

    def to(self, device) -> Fragments:
        return Fragments(*(t.to(device) for t in (self.face_ids, self.bary, self.depth, self.mask)))


@dataclass(frozen=True)
class Light:
    """Lambertian shading: ``rgb = albedo * (ambient + diffuse * max(0, n . l))``.

    direction_cam: unit vector *from the surface toward the light*, in each view's OpenCV
    camera frame (x right, y down, z forward), i.e. a light fixed to every camera. The
    default ``(0, 0, -1)`` is a headlight: surfaces facing the camera are fully lit.
    """

    ambient: float = 0.4
    diffuse: float = 0.6
    direction_cam: tuple[float, float, float] = (0.0, 0.0, -1.0)

    def unit_direction(self) -> np.ndarray:
        d = np.asarray(self.direction_cam, dtype=np.float64).reshape(3)
        n = float(np.linalg.norm(d))
        if not n > 0:
            raise ValueError(
                f"Light.direction_cam must be a non-zero 3-vector, got {self.direction_cam}"
            )
        return d / n


@dataclass(frozen=True)
class RenderPasses:
    """Render passes stacked channels-last.

    images: (..., V, H, W, C) float32; channels: the C channel names, e.g.
    ``("rgb_r", "rgb_g", "rgb_b", "albedo_r", ..., "depth", "normal_x", ..., "mask")``.
    """

    images: Tensor
    channels: tuple[str, ...]

    def get(self, name: str) -> Tensor:
        """One pass by name (``"rgb"``, ``"normal"``, ...) or one channel (``"rgb_g"``):
        (..., V, H, W, c)."""
        names = PASS_CHANNELS.get(name, (name,))
        try:
            idx = [self.channels.index(n) for n in names]
        except ValueError:
            raise KeyError(
                f"no pass or channel '{name}' rendered; channels are {self.channels}"
            ) from None
        start = idx[0]
        if idx == list(range(start, start + len(idx))):
            return self.images[..., start : start + len(idx)]
        return self.images[..., idx]


# ==========================================================================================
# input checks
# ==========================================================================================
def _check_vertices(vertices_world: Tensor) -> Tensor:
    if not isinstance(vertices_world, Tensor):
        vertices_world = torch.as_tensor(np.asarray(vertices_world, dtype=np.float32))
    if vertices_world.ndim not in (2, 3) or vertices_world.shape[-1] != 3:
        raise ValueError(
            "vertices_world must have shape (N, 3) or (B, N, 3) metres, got "
            f"{tuple(vertices_world.shape)}"
        )
    return vertices_world


def _check_faces(faces, num_vertices: int, device) -> Tensor:
    faces = (
        torch.as_tensor(faces, device=device) if not isinstance(faces, Tensor) else faces.to(device)
    )
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        raise ValueError(
            f"faces must be an integer (F, 3) array, got {tuple(faces.shape)} {faces.dtype}"
        )
    faces = faces.long()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_vertices):
        raise ValueError(
            f"faces index vertices in [{int(faces.min())}, {int(faces.max())}] but there are only "
            f"{num_vertices} vertices"
        )
    return faces


def _rig_image_size(rig: Rig, image_size) -> tuple[int, int]:
    if image_size is not None:
        w, h = (int(s) for s in image_size)
        if w <= 0 or h <= 0:
            raise ValueError(f"image_size must be (width, height) > 0, got {image_size}")
        sizes = {c.image_size for c in rig}
        if sizes != {(w, h)}:
            raise ValueError(
                f"image_size={tuple(image_size)} differs from the rig's camera sizes "
                f"{sorted(sizes)}; the intrinsics K belong to the calibrated size. Render with "
                "rig.with_image_size((W, H)) instead, "
                "which rescales K to the new size."
            )
        return w, h
    return canvas_size(rig)


def canvas_size(rig: Rig) -> tuple[int, int]:
    """(width, height) of the common canvas of the rig's views: the largest width and the
    largest height (the cameras' size when they share one; see the module docstring)."""
    return max(c.width for c in rig), max(c.height for c in rig)


def pad_views(images, size: tuple[int, int] | None = None) -> np.ndarray:
    """Per-view images onto a common canvas: a sequence of V arrays (H_v, W_v, ...) or an
    array (V, H, W, ...) -> (V, Hc, Wc, ...) with each image in the top-left corner and 0 beyond
    it. size: (Wc, Hc), default the largest. An array already at that size is returned as is."""
    if isinstance(images, np.ndarray) and (size is None or images.shape[1:3] == (size[1], size[0])):
        return images
    images = [np.asarray(im) for im in images]
    Wc = max(im.shape[1] for im in images) if size is None else int(size[0])
    Hc = max(im.shape[0] for im in images) if size is None else int(size[1])
    out = np.zeros((len(images), Hc, Wc) + images[0].shape[2:], images[0].dtype)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        if h > Hc or w > Wc:
            raise ValueError(f"image {i} is {w}x{h}, larger than the canvas {Wc}x{Hc}")
        out[i, :h, :w] = im
    return out


def _rasterize_views_by_size(rig: Rig, vertices_world: Tensor, faces, backend: str, near: float) -> Fragments:
    """Fragments on the rig's canvas, each group of equal-sized views rasterized at its own size."""
    W, H = canvas_size(rig)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, cam in enumerate(rig):
        groups.setdefault(cam.image_size, []).append(i)
    out = None
    for (w, h), idx in groups.items():
        part = rasterize(rig.subset([rig.names[i] for i in idx]), vertices_world, faces, backend=backend, near=near)
        if out is None:
            lead = tuple(part.face_ids.shape[:-3]) + (len(rig), H, W)
            dev = part.face_ids.device
            out = Fragments(
                face_ids=torch.full(lead, -1, dtype=part.face_ids.dtype, device=dev),
                bary=torch.zeros(lead + (3,), dtype=part.bary.dtype, device=dev),
                depth=torch.zeros(lead, dtype=part.depth.dtype, device=dev),
                mask=torch.zeros(lead, dtype=torch.bool, device=dev),
            )
        for k, i in enumerate(idx):
            for name in ("face_ids", "depth", "mask"):
                getattr(out, name)[..., i, :h, :w] = getattr(part, name)[..., k, :, :]
            out.bary[..., i, :h, :w, :] = part.bary[..., k, :, :, :]
    return out


# ==========================================================================================
# cpu backend (numba)
# ==========================================================================================
@njit(cache=True, inline="always")
def _tiebreak(cx, cy, cz):
    # sign of c . (eps, eps^2, eps^3) for an infinitesimal eps: symbolic perturbation of the
    # pixel ray, decides pixels whose centre lies exactly on an edge
    if cx != 0.0:
        return cx > 0.0
    if cy != 0.0:
        return cy > 0.0
    return cz > 0.0


@njit(cache=True)
def _raster_view(P, faces, H, W, near, fid, zbuf, count, do_count):
    """Z-buffer one view. P (N, 3) float64 homogeneous pixel coords K @ x_cam."""
    eps = 1e-6
    us = np.empty(4)
    vs = np.empty(4)
    for f in range(faces.shape[0]):
        i0 = faces[f, 0]
        i1 = faces[f, 1]
        i2 = faces[f, 2]
        ax = P[i0, 0]
        ay = P[i0, 1]
        az = P[i0, 2]
        bx = P[i1, 0]
        by = P[i1, 1]
        bz = P[i1, 2]
        qx = P[i2, 0]
        qy = P[i2, 1]
        qz = P[i2, 2]
        if not (az >= near or bz >= near or qz >= near):
            continue  # entirely in front of the near plane (or NaN)
        # edge planes through the camera centre: e_k(d) = c_k . d, d = (u, v, 1)
        c0x = by * qz - bz * qy  # b x q, opposite a
        c0y = bz * qx - bx * qz
        c0z = bx * qy - by * qx
        c1x = qy * az - qz * ay  # q x a, opposite b
        c1y = qz * ax - qx * az
        c1z = qx * ay - qy * ax
        c2x = ay * bz - az * by  # a x b, opposite q
        c2y = az * bx - ax * bz
        c2z = ax * by - ay * bx
        D = ax * c0x + ay * c0y + az * c0z
        if not (D != 0.0):
            continue  # plane through the camera centre (edge-on) or NaN
        if D < 0.0:
            D = -D
            c0x = -c0x
            c0y = -c0y
            c0z = -c0z
            c1x = -c1x
            c1y = -c1y
            c1z = -c1z
            c2x = -c2x
            c2y = -c2y
            c2z = -c2z
        # bounding box of the part of the triangle at z >= near
        n = 0
        if az >= near and bz >= near and qz >= near:
            us[0] = ax / az
            vs[0] = ay / az
            us[1] = bx / bz
            vs[1] = by / bz
            us[2] = qx / qz
            vs[2] = qy / qz
            n = 3
        else:
            for k in range(3):
                if k == 0:
                    px, py, pz, rx, ry, rz = ax, ay, az, bx, by, bz
                elif k == 1:
                    px, py, pz, rx, ry, rz = bx, by, bz, qx, qy, qz
                else:
                    px, py, pz, rx, ry, rz = qx, qy, qz, ax, ay, az
                if pz >= near:
                    us[n] = px / pz
                    vs[n] = py / pz
                    n += 1
                if (pz >= near) != (rz >= near):
                    s = (near - pz) / (rz - pz)
                    us[n] = (px + s * (rx - px)) / near
                    vs[n] = (py + s * (ry - py)) / near
                    n += 1
        umin = us[0]
        umax = us[0]
        vmin = vs[0]
        vmax = vs[0]
        for k in range(1, n):
            umin = min(umin, us[k])
            umax = max(umax, us[k])
            vmin = min(vmin, vs[k])
            vmax = max(vmax, vs[k])
        if not (umax >= -1.0 and umin <= W and vmax >= -1.0 and vmin <= H):
            continue  # off-screen (or NaN)
        umin = max(umin, -1.0)  # keep the float -> int conversions in range
        umax = min(umax, float(W))
        vmin = max(vmin, -1.0)
        vmax = min(vmax, float(H))
        x0 = max(0, int(np.ceil(umin - eps)))
        x1 = min(W - 1, int(np.floor(umax + eps)))
        y0 = max(0, int(np.ceil(vmin - eps)))
        y1 = min(H - 1, int(np.floor(vmax + eps)))
        t0 = _tiebreak(c0x, c0y, c0z)
        t1 = _tiebreak(c1x, c1y, c1z)
        t2 = _tiebreak(c2x, c2y, c2z)
        for y in range(y0, y1 + 1):
            fy = float(y)
            r0 = c0y * fy + c0z
            r1 = c1y * fy + c1z
            r2 = c2y * fy + c2z
            for x in range(x0, x1 + 1):
                fx = float(x)
                e0 = c0x * fx + r0
                if e0 < 0.0 or (e0 == 0.0 and not t0):
                    continue
                e1 = c1x * fx + r1
                if e1 < 0.0 or (e1 == 0.0 and not t1):
                    continue
                e2 = c2x * fx + r2
                if e2 < 0.0 or (e2 == 0.0 and not t2):
                    continue
                ssum = e0 + e1 + e2
                # camera depth of the hit: z = D / ssum (ssum > 0 here unless the ray grazes)
                if not (ssum > 0.0) or D < near * ssum:
                    continue
                if do_count:
                    count[y, x] += 1
                if D < zbuf[y, x] * ssum:
                    zbuf[y, x] = D / ssum
                    fid[y, x] = f


@njit(cache=True)
def _resolve_view(P, faces, fid, bary, depth):
    """Barycentrics of the winning faces (recomputed once per pixel); depth := 0 where empty."""
    H, W = fid.shape
    for y in range(H):
        fy = float(y)
        for x in range(W):
            f = fid[y, x]
            if f < 0:  # bary is pre-zeroed (np.zeros: untouched pages stay free)
                depth[y, x] = 0.0
                continue
            i0 = faces[f, 0]
            i1 = faces[f, 1]
            i2 = faces[f, 2]
            ax, ay, az = P[i0, 0], P[i0, 1], P[i0, 2]
            bx, by, bz = P[i1, 0], P[i1, 1], P[i1, 2]
            qx, qy, qz = P[i2, 0], P[i2, 1], P[i2, 2]
            fx = float(x)
            e0 = (by * qz - bz * qy) * fx + (bz * qx - bx * qz) * fy + (bx * qy - by * qx)
            e1 = (qy * az - qz * ay) * fx + (qz * ax - qx * az) * fy + (qx * ay - qy * ax)
            e2 = (ay * bz - az * by) * fx + (az * bx - ax * bz) * fy + (ax * by - ay * bx)
            s = e0 + e1 + e2
            bary[y, x, 0] = e0 / s
            bary[y, x, 1] = e1 / s
            bary[y, x, 2] = e2 / s


@njit(cache=True, parallel=True)
def _raster_jobs(P, faces, H, W, near, fid, bary, depth, count, do_count):
    """P (J, N, 3) float64; outputs fid (J,H,W) int64, bary (J,H,W,3) f32, depth (J,H,W) f32."""
    J = P.shape[0]
    for j in prange(J):
        zbuf = depth[j]  # float32 z-buffer, becomes the depth output
        zbuf[:, :] = np.inf
        fj = fid[j]
        fj[:, :] = -1
        _raster_view(P[j], faces, H, W, near, fj, zbuf, count[j], do_count)
        _resolve_view(P[j], faces, fj, bary[j], zbuf)


def _homogeneous_pixels(rig: Rig, vertices_world: Tensor) -> np.ndarray:
    """(..., N, 3) world -> (J = prod(...) * V, N, 3) float64 ``K @ x_cam`` (numpy)."""
    cams = rig.tensors(device="cpu", dtype=torch.float64)
    v = vertices_world.detach().to("cpu", torch.float64)
    M = cams["K"] @ cams["R_world2cam"]  # (V,3,3)
    m = torch.einsum("vij,vj->vi", cams["K"], cams["t_world2cam"])  # (V,3)
    P = torch.einsum("vij,...nj->...vni", M, v) + m[:, None, :]
    return np.ascontiguousarray(P.reshape(-1, P.shape[-2], 3).numpy())


def _rasterize_cpu(rig, vertices_world, faces, W, H, near, do_count=False):
    lead = tuple(vertices_world.shape[:-2]) + (len(rig),)
    P = _homogeneous_pixels(rig, vertices_world)
    J = P.shape[0]
    F = np.ascontiguousarray(faces.cpu().numpy().astype(np.int64))
    fid = np.empty((J, H, W), np.int64)
    bary = np.zeros((J, H, W, 3), np.float32)
    depth = np.empty((J, H, W), np.float32)
    count = np.zeros((J, H, W) if do_count else (J, 1, 1), np.int32)
    _raster_jobs(P, F, H, W, float(near), fid, bary, depth, count, do_count)
    fid_t = torch.from_numpy(fid).reshape(*lead, H, W)
    frags = Fragments(
        face_ids=fid_t,
        bary=torch.from_numpy(bary).reshape(*lead, H, W, 3),
        depth=torch.from_numpy(depth).reshape(*lead, H, W),
        mask=fid_t >= 0,
    )
    return frags, torch.from_numpy(count).reshape(*lead, *count.shape[1:])


# ==========================================================================================
# nvdiffrast backend
# ==========================================================================================
@functools.lru_cache(maxsize=1)
def nvdiffrast_available() -> bool:
    """True when CUDA is available and ``nvdiffrast.torch`` imports (extra ``gpu``)."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:
        return False
    return True


_NV_CONTEXTS: dict = {}


def _nv_context(device: torch.device):
    import nvdiffrast.torch as dr

    key = str(device)
    if key not in _NV_CONTEXTS:
        try:
            _NV_CONTEXTS[key] = dr.RasterizeCudaContext(device=device)
        except ModuleNotFoundError as exc:
            # nvdiffrast 0.3.x compiles its plugin on first use, then imports it by name; newer
            # torch (seen with 2.11) no longer puts the build folder on sys.path, so the import
            # fails although the build succeeded: add the folder and try once more
            from torch.utils import cpp_extension

            if not (exc.name or "").startswith("nvdiffrast_plugin"):
                raise
            sys.path.append(cpp_extension._get_build_directory(exc.name, False))
            _NV_CONTEXTS[key] = dr.RasterizeCudaContext(device=device)
    return _NV_CONTEXTS[key]


def opencv_to_clip(
    K: Tensor, image_size: tuple[int, int], near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR
) -> Tensor:
    """(V, 3, 3) OpenCV intrinsics -> (V, 4, 4) matrices mapping camera points (x, y, z, 1)
    to clip space, for a rasterizer that samples row ``i`` at NDC ``y = (i + 0.5) * 2 / H - 1``
    and column ``j`` at ``x = (j + 0.5) * 2 / W - 1`` (nvdiffrast, OpenGL viewport).

    Our pixel ``(u, v)`` (origin at the centre of the top-left pixel) maps to
    ``x_ndc = (2 u + 1) / W - 1`` and ``y_ndc = (2 v + 1) / H - 1``, so nvdiffrast's output
    row ``i`` *is* image row ``v = i``: the usual OpenGL y-flip and the bottom-up row order
    cancel, and no row flip is needed. ``w_clip = z_cam``; depth maps ``[near, far]`` to
    ``[-1, 1]`` (OpenGL), so the rasterizer clips at the near plane.
    """
    W, H = image_size
    V = K.shape[0]
    fx, s, cx = K[:, 0, 0], K[:, 0, 1], K[:, 0, 2]
    fy, cy = K[:, 1, 1], K[:, 1, 2]
    A = torch.zeros(V, 4, 4, dtype=K.dtype, device=K.device)
    A[:, 0, 0] = 2 * fx / W
    A[:, 0, 1] = 2 * s / W
    A[:, 0, 2] = 2 * (cx + 0.5) / W - 1
    A[:, 1, 1] = 2 * fy / H
    A[:, 1, 2] = 2 * (cy + 0.5) / H - 1
    A[:, 2, 2] = (far + near) / (far - near)
    A[:, 2, 3] = -2 * far * near / (far - near)
    A[:, 3, 2] = 1.0
    return A


def _rasterize_nvdiffrast(rig, vertices_world, faces, W, H, near, far=DEFAULT_FAR):
    import nvdiffrast.torch as dr

    device = vertices_world.device if vertices_world.is_cuda else torch.device("cuda")
    v = vertices_world.detach().to(device, torch.float32)
    lead = tuple(v.shape[:-2]) + (len(rig),)
    cams = rig.tensors(device=device, dtype=torch.float32)
    cam = torch.einsum("vij,...nj->...vni", cams["R_world2cam"], v) + cams["t_world2cam"][:, None, :]
    cam = cam.reshape(-1, cam.shape[-2], 3)  # (J, N, 3)
    A = opencv_to_clip(cams["K"].double(), (W, H), near, far).float()  # (V,4,4)
    A = A.repeat(cam.shape[0] // len(rig), 1, 1)  # (J,4,4), views fastest
    cam_h = torch.cat([cam, torch.ones_like(cam[..., :1])], dim=-1)
    pos = torch.einsum("jab,jnb->jna", A, cam_h).contiguous()
    tri = faces.to(device=device, dtype=torch.int32).contiguous()
    with torch.no_grad():
        rast, _ = dr.rasterize(_nv_context(device), pos, tri, resolution=(H, W))
    # rast[..., 0:2] = (u, v): perspective-correct weights of tri[:, 0] and tri[:, 1]; the
    # weight of tri[:, 2] is 1 - u - v. rast[..., 3] = triangle id + 1 (0 = empty).
    fid = rast[..., 3].round().long() - 1
    mask = fid >= 0
    b01 = rast[..., 0:2]
    bary = torch.cat([b01, 1 - b01.sum(-1, keepdim=True)], dim=-1)
    bary = torch.where(mask[..., None], bary, torch.zeros_like(bary))
    fsafe = fid.clamp(min=0)
    z = cam[..., 2]  # (J, N)
    corners = tri.long()[fsafe]  # (J, H, W, 3)
    jidx = torch.arange(z.shape[0], device=device)[:, None, None, None]
    corner_z = z[jidx, corners]  # (J, H, W, 3)
    depth = torch.where(mask, (bary * corner_z).sum(-1), torch.zeros((), device=device))
    return Fragments(
        face_ids=fid.reshape(*lead, H, W),
        bary=bary.float().reshape(*lead, H, W, 3),
        depth=depth.float().reshape(*lead, H, W),
        mask=mask.reshape(*lead, H, W),
    )


# ==========================================================================================
# public rasterize
# ==========================================================================================
def rasterize(
    rig: Rig,
    vertices_world: Tensor,
    faces,
    image_size: tuple[int, int] | None = None,
    backend: str = "auto",
    near: float = DEFAULT_NEAR,
) -> Fragments:
    """Rasterize a triangle mesh into every view of the rig (undistorted pinhole images).

    vertices_world: (N, 3) or (B, N, 3) metres (torch or numpy). faces: (F, 3) integer.
    image_size: (width, height); defaults to the rig's. Cameras of different sizes are
    rendered each at its own size onto the common canvas (see the module docstring).
    backend: ``"cpu"`` (numba, threads over views via ``numba.set_num_threads``),
    ``"nvdiffrast"`` (CUDA), or ``"auto"`` (nvdiffrast when CUDA and the module are
    available, else cpu). near: near plane in metres.

    Returns :class:`Fragments` with shapes (V, H, W[, 3]) or (B, V, H, W[, 3]) on the
    device of ``vertices_world`` (whichever backend ran; pass CUDA vertices to keep
    nvdiffrast's output on the GPU).
    """
    vertices_world = _check_vertices(vertices_world)
    faces = _check_faces(faces, vertices_world.shape[-2], vertices_world.device)
    W, H = _rig_image_size(rig, image_size)
    if not near > 0:
        raise ValueError(f"near must be > 0 metres, got {near}")
    if backend == "auto":
        backend = "nvdiffrast" if nvdiffrast_available() else "cpu"
    if len({c.image_size for c in rig}) > 1:
        return _rasterize_views_by_size(rig, vertices_world, faces, backend, near)
    if backend == "cpu":
        frags, _ = _rasterize_cpu(rig, vertices_world, faces, W, H, near)
        if vertices_world.device.type != "cpu":
            frags = frags.to(vertices_world.device)
        return frags
    if backend == "nvdiffrast":
        if not torch.cuda.is_available():
            raise RuntimeError("backend='nvdiffrast' needs CUDA; use backend='cpu'")
        try:
            import nvdiffrast.torch  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "backend='nvdiffrast' needs the nvdiffrast module: pip install 'mvcap[gpu]' "
                "(diffrp-nvdiffrast; compiled on first use, needs nvcc and a CUDA build of torch)"
            ) from exc
        frags = _rasterize_nvdiffrast(rig, vertices_world, faces, W, H, near)
        if vertices_world.device != frags.face_ids.device:
            frags = frags.to(vertices_world.device)
        return frags
    raise ValueError(f"unknown backend '{backend}'; use 'auto', 'cpu' or 'nvdiffrast'")


def coverage_count(
    rig: Rig, vertices_world: Tensor, faces, image_size=None, near: float = DEFAULT_NEAR
) -> Tensor:
    """Debug: how many triangles cover each pixel centre (before the depth test), cpu
    backend. (..., V, H, W) int32. A closed mesh seen from outside covers every pixel an
    even number of times (2 for a convex one). The rig's cameras must share one size."""
    vertices_world = _check_vertices(vertices_world)
    faces = _check_faces(faces, vertices_world.shape[-2], "cpu")
    if image_size is None and len({c.image_size for c in rig}) > 1:
        raise ValueError(f"coverage_count needs cameras of one size, got {sorted({c.image_size for c in rig})}")
    W, H = _rig_image_size(rig, image_size)
    _, count = _rasterize_cpu(rig, vertices_world, faces, W, H, near, do_count=True)
    return count


# ==========================================================================================
# render passes
# ==========================================================================================
def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals. vertices (..., N, 3), faces (F, 3) -> (..., N, 3).
    Outward for counter-clockwise faces (right-hand rule)."""
    v0, v1, v2 = (vertices[..., faces[:, k], :] for k in range(3))
    fn = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # |fn| = 2 * area
    n = torch.zeros_like(vertices)
    for k in range(3):
        n.index_add_(-2, faces[:, k], fn)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@njit(cache=True, parallel=True)
def _shade_jobs(
    fid, bary, depth, faces, cam, vattr, vattr_job, uv_faces, uvs, texture, tex_scale, use_tex,
    light, ambient, diffuse, const_albedo, offs, out,
):  # fmt: skip
    """One pass over the pixels writing every requested channel.

    fid (J,H,W) i64, bary (J,H,W,3) f32, depth (J,H,W) f32, faces (F,3) i64,
    cam (J,N,3) f32 camera-space vertices (for facing), vattr (Ja,N,9) f32 =
    [normal_cam(3), template(3), colour(3)], vattr_job (J,) index into Ja,
    uv_faces (F,3) i64, uvs (T,2) f32, texture (Ht,Wt,3) f32 or uint8 (values * tex_scale
    give [0, 1]; uint8 keeps the texture 4x smaller in cache), offs (6,) channel offsets of
    rgb, albedo, depth, normal, template, mask (-1 = not requested), out (J,H,W,C) f32
    pre-zeroed (empty pixels are not written).
    """
    J, H, W = fid.shape
    Ht = texture.shape[0]
    Wt = texture.shape[1]
    o_rgb, o_alb, o_dep, o_nrm, o_tpl, o_msk = offs[0], offs[1], offs[2], offs[3], offs[4], offs[5]
    need_alb = o_rgb >= 0 or o_alb >= 0
    need_nrm = o_rgb >= 0 or o_nrm >= 0
    for jy in prange(J * H):
        j = jy // H
        y = jy - j * H
        ja = vattr_job[j]
        for x in range(W):
            f = fid[j, y, x]
            if f < 0:  # out is pre-zeroed
                continue
            b0 = bary[j, y, x, 0]
            b1 = bary[j, y, x, 1]
            b2 = bary[j, y, x, 2]
            i0 = faces[f, 0]
            i1 = faces[f, 1]
            i2 = faces[f, 2]
            nx = 0.0
            ny = 0.0
            nz = 0.0
            if need_nrm:
                nx = b0 * vattr[ja, i0, 0] + b1 * vattr[ja, i1, 0] + b2 * vattr[ja, i2, 0]
                ny = b0 * vattr[ja, i0, 1] + b1 * vattr[ja, i1, 1] + b2 * vattr[ja, i2, 1]
                nz = b0 * vattr[ja, i0, 2] + b1 * vattr[ja, i1, 2] + b2 * vattr[ja, i2, 2]
                nn = np.sqrt(nx * nx + ny * ny + nz * nz)
                if nn > 0:
                    nn = 1.0 / nn
                # facing: det(a, b, c) of the camera-space corners > 0 means the face's
                # (right-hand) normal points away from the camera: show its back side
                ax, ay, az = cam[j, i0, 0], cam[j, i0, 1], cam[j, i0, 2]
                bx, by, bz = cam[j, i1, 0], cam[j, i1, 1], cam[j, i1, 2]
                qx, qy, qz = cam[j, i2, 0], cam[j, i2, 1], cam[j, i2, 2]
                det = ax * (by * qz - bz * qy) + ay * (bz * qx - bx * qz) + az * (bx * qy - by * qx)
                if det > 0:
                    nn = -nn
                nx *= nn
                ny *= nn
                nz *= nn
                if o_nrm >= 0:
                    out[j, y, x, o_nrm] = nx
                    out[j, y, x, o_nrm + 1] = ny
                    out[j, y, x, o_nrm + 2] = nz
            if o_tpl >= 0:
                for c in range(3):
                    out[j, y, x, o_tpl + c] = (
                        b0 * vattr[ja, i0, 3 + c]
                        + b1 * vattr[ja, i1, 3 + c]
                        + b2 * vattr[ja, i2, 3 + c]
                    )
            if need_alb:
                r = const_albedo
                g = const_albedo
                bb = const_albedo
                if use_tex:
                    t0 = uv_faces[f, 0]
                    t1 = uv_faces[f, 1]
                    t2 = uv_faces[f, 2]
                    tu = b0 * uvs[t0, 0] + b1 * uvs[t1, 0] + b2 * uvs[t2, 0]
                    tv = b0 * uvs[t0, 1] + b1 * uvs[t1, 1] + b2 * uvs[t2, 1]
                    # OpenGL UVs: u right, v up; texel (i, k) centre at ((k+.5)/Wt, 1-(i+.5)/Ht)
                    px = tu * Wt - 0.5
                    py = (1.0 - tv) * Ht - 0.5
                    px = min(max(px, 0.0), Wt - 1.0)
                    py = min(max(py, 0.0), Ht - 1.0)
                    kx = min(int(px), Wt - 2) if Wt > 1 else 0
                    ky = min(int(py), Ht - 2) if Ht > 1 else 0
                    wx = px - kx
                    wy = py - ky
                    kx1 = min(kx + 1, Wt - 1)
                    ky1 = min(ky + 1, Ht - 1)
                    w00 = (1 - wx) * (1 - wy)
                    w01 = wx * (1 - wy)
                    w10 = (1 - wx) * wy
                    w11 = wx * wy
                    r = (
                        w00 * texture[ky, kx, 0]
                        + w01 * texture[ky, kx1, 0]
                        + w10 * texture[ky1, kx, 0]
                        + w11 * texture[ky1, kx1, 0]
                    )
                    g = (
                        w00 * texture[ky, kx, 1]
                        + w01 * texture[ky, kx1, 1]
                        + w10 * texture[ky1, kx, 1]
                        + w11 * texture[ky1, kx1, 1]
                    )
                    bb = (
                        w00 * texture[ky, kx, 2]
                        + w01 * texture[ky, kx1, 2]
                        + w10 * texture[ky1, kx, 2]
                        + w11 * texture[ky1, kx1, 2]
                    )
                    r *= tex_scale
                    g *= tex_scale
                    bb *= tex_scale
                elif const_albedo < 0:
                    r = b0 * vattr[ja, i0, 6] + b1 * vattr[ja, i1, 6] + b2 * vattr[ja, i2, 6]
                    g = b0 * vattr[ja, i0, 7] + b1 * vattr[ja, i1, 7] + b2 * vattr[ja, i2, 7]
                    bb = b0 * vattr[ja, i0, 8] + b1 * vattr[ja, i1, 8] + b2 * vattr[ja, i2, 8]
                if o_alb >= 0:
                    out[j, y, x, o_alb] = r
                    out[j, y, x, o_alb + 1] = g
                    out[j, y, x, o_alb + 2] = bb
                if o_rgb >= 0:
                    lam = nx * light[0] + ny * light[1] + nz * light[2]
                    shade = ambient + diffuse * max(lam, 0.0)
                    out[j, y, x, o_rgb] = r * shade
                    out[j, y, x, o_rgb + 1] = g * shade
                    out[j, y, x, o_rgb + 2] = bb * shade
            if o_dep >= 0:
                out[j, y, x, o_dep] = depth[j, y, x]
            if o_msk >= 0:
                out[j, y, x, o_msk] = 1.0


def _as_tensor_readonly_ok(a) -> Tensor:
    """torch view of an array we only read (read-only numpy arrays, e.g. a Subject's
    texture, are fine: nothing here writes to them)."""
    if isinstance(a, Tensor):
        return a
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(a))


def _as_float_colors(a, name: str, device) -> Tensor:
    t = _as_tensor_readonly_ok(a)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    return t.to(device=device, dtype=torch.float32)


def _bilinear_torch(texture: Tensor, uv: Tensor) -> Tensor:
    """texture (Ht, Wt, 3), uv (..., 2) OpenGL UVs -> (..., 3), clamp-to-edge."""
    Ht, Wt = texture.shape[:2]
    px = (uv[..., 0] * Wt - 0.5).clamp(0, Wt - 1)
    py = ((1 - uv[..., 1]) * Ht - 0.5).clamp(0, Ht - 1)
    kx = px.floor().long().clamp(max=max(Wt - 2, 0))
    ky = py.floor().long().clamp(max=max(Ht - 2, 0))
    wx = (px - kx)[..., None]
    wy = (py - ky)[..., None]
    kx1 = (kx + 1).clamp(max=Wt - 1)
    ky1 = (ky + 1).clamp(max=Ht - 1)
    return (
        (1 - wx) * (1 - wy) * texture[ky, kx]
        + wx * (1 - wy) * texture[ky, kx1]
        + (1 - wx) * wy * texture[ky1, kx]
        + wx * wy * texture[ky1, kx1]
    )


def _shade_torch(
    frags,
    faces,
    cam,
    vattr,
    vattr_job,
    uv_faces,
    uvs,
    texture,
    light_dir,
    light,
    const_albedo,
    offs,
    C,
):
    """Vectorised torch version of :func:`_shade_jobs` over the covered pixels only (for
    CUDA tensors, and a reference in tests)."""
    fid = frags.face_ids.reshape(-1)
    J = int(np.prod(frags.face_ids.shape[:-2]))
    H, W = frags.face_ids.shape[-2:]
    dev = fid.device
    pix = torch.nonzero(fid >= 0, as_tuple=True)[0]  # (P,)
    f = fid[pix]
    job = torch.div(pix, H * W, rounding_mode="floor")
    bary = frags.bary.reshape(-1, 3)[pix].float()  # (P,3)
    corner = faces[f]  # (P,3)
    va = vattr[vattr_job.to(dev)[job][:, None], corner]  # (P,3,9)
    interp = (bary[..., None] * va).sum(-2)  # (P,9)
    det = torch.linalg.det(cam[job[:, None], corner].double())  # (P,)
    n = interp[:, 0:3]
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    n = torch.where((det > 0)[:, None], -n, n)
    if uvs is not None and texture is not None:
        uv = (bary[..., None] * uvs[uv_faces[f]]).sum(-2)  # (P,2)
        alb = _bilinear_torch(texture, uv)
    elif const_albedo < 0:
        alb = interp[:, 6:9]
    else:
        alb = torch.full_like(n, const_albedo)
    o_rgb, o_alb, o_dep, o_nrm, o_tpl, o_msk = (int(o) for o in offs)
    vals = torch.zeros(len(pix), C, device=dev, dtype=torch.float32)
    if o_rgb >= 0:
        lam = (n * torch.as_tensor(light_dir, dtype=n.dtype, device=dev)).sum(-1, keepdim=True)
        vals[:, o_rgb : o_rgb + 3] = alb * (light.ambient + light.diffuse * lam.clamp(min=0))
    if o_alb >= 0:
        vals[:, o_alb : o_alb + 3] = alb
    if o_dep >= 0:
        vals[:, o_dep] = frags.depth.reshape(-1)[pix].float()
    if o_nrm >= 0:
        vals[:, o_nrm : o_nrm + 3] = n
    if o_tpl >= 0:
        vals[:, o_tpl : o_tpl + 3] = interp[:, 3:6]
    if o_msk >= 0:
        vals[:, o_msk] = 1.0
    out = torch.zeros(J * H * W, C, device=dev, dtype=torch.float32)
    out[pix] = vals
    return out.reshape(J, H, W, C)


def render_passes(
    fragments: Fragments,
    rig: Rig,
    vertices_world: Tensor,
    faces,
    *,
    template_vertices: Tensor | None = None,
    vertex_colors: Tensor | None = None,
    texture: Tensor | None = None,
    uvs: Tensor | None = None,
    uv_faces: Tensor | None = None,
    light: Light = Light(),
    passes: Sequence[str] = ("rgb", "albedo", "depth", "normal", "template", "mask"),
    backend: str = "auto",
) -> RenderPasses:
    """Render passes of the visible surface from rasterized fragments.

    fragments: from :func:`rasterize` with the same rig, vertices and faces.
    vertices_world: (N, 3) or (B, N, 3), matching the fragments' leading dims.
    template_vertices: (N, 3) neutral rest mesh (needed for the ``template`` pass): each
        pixel gets its surface point's rest-mesh position in metres.
    Appearance (albedo), first available of: ``texture`` (Ht, Wt, 3) float in [0, 1] or
        uint8 with ``uvs`` (T, 2) and ``uv_faces`` (F, 3) -- OpenGL UV convention: u to the
        right, v *up*, texture row 0 is the top (v = 1), texel centres at half-integers,
        bilinear, clamped at the border; ``vertex_colors`` (N, 3) float [0, 1] or uint8,
        interpolated; else uniform grey 0.7.
    Shading: ``rgb = albedo * (ambient + diffuse * max(0, n . l))`` (see :class:`Light`).
    ``normal``: unit normals in each view's OpenCV camera frame (x right, y down, z
        forward) from area-weighted vertex normals, interpolated and renormalised; flipped
        on faces seen from their back side, so they face the camera (n_z < 0 typically).
    ``depth``: camera z in metres. ``mask``: 1 on the silhouette. Empty pixels are 0.
    backend: ``"auto"`` (numba for cpu tensors, torch otherwise), ``"cpu"`` or ``"torch"``.

    Returns :class:`RenderPasses` with images (..., V, H, W, C) float32 in the order of
    ``passes``.
    """
    passes = tuple(passes)
    unknown = [p for p in passes if p not in PASS_CHANNELS]
    if unknown or len(set(passes)) != len(passes):
        raise ValueError(f"passes must be distinct names from {list(PASS_CHANNELS)}, got {passes}")
    vertices_world = _check_vertices(vertices_world)
    dev = fragments.face_ids.device
    lead = tuple(fragments.face_ids.shape[:-2])
    if tuple(vertices_world.shape[:-2]) + (len(rig),) != lead:
        raise ValueError(
            f"vertices_world {tuple(vertices_world.shape)} does not match fragments with "
            f"leading shape {lead} "
            f"(expected (..., N, 3) with ... = {lead[:-1]} and a rig of {lead[-1]} views)"
        )
    N = vertices_world.shape[-2]
    faces = _check_faces(faces, N, dev)
    H, W = fragments.face_ids.shape[-2:]
    J = int(np.prod(lead))

    channels: list[str] = []
    offs = np.full(6, -1, np.int64)
    for p in passes:
        offs[list(PASS_CHANNELS).index(p)] = len(channels)
        channels.extend(PASS_CHANNELS[p])
    C = len(channels)

    v = vertices_world.detach().to(dev, torch.float32)
    cams = rig.tensors(device=dev, dtype=torch.float32)
    cam = torch.einsum("vij,...nj->...vni", cams["R_world2cam"], v) + cams["t_world2cam"][:, None, :]
    cam = cam.reshape(J, N, 3).contiguous()
    need_nrm = "rgb" in passes or "normal" in passes
    if need_nrm:
        n_world = vertex_normals(v, faces)  # (..., N, 3)
        n_cam = torch.einsum("vij,...nj->...vni", cams["R_world2cam"], n_world).reshape(J, N, 3)
    else:
        n_cam = torch.zeros(1, N, 3, device=dev)
    if "template" in passes:
        if template_vertices is None:
            raise ValueError(
                "the 'template' pass needs template_vertices (N, 3), the neutral rest mesh "
                "(e.g. body.template_vertices()); pass it or drop 'template' from passes"
            )
        tpl = torch.as_tensor(template_vertices).detach().to(dev, torch.float32)
        if tpl.shape != (N, 3):
            raise ValueError(f"template_vertices must have shape ({N}, 3), got {tuple(tpl.shape)}")
    else:
        tpl = torch.zeros(N, 3, device=dev)

    use_tex = texture is not None
    const_albedo = DEFAULT_ALBEDO
    col = torch.zeros(N, 3, device=dev)
    tex_t = torch.zeros(1, 1, 3, device=dev)
    uvs_t = torch.zeros(1, 2, device=dev)
    uvf_t = torch.zeros(1, 3, dtype=torch.long, device=dev)
    if use_tex:
        if uvs is None or uv_faces is None:
            raise ValueError("a texture needs uvs (T, 2) and uv_faces (F, 3) to be looked up")
        tex_t = _as_tensor_readonly_ok(texture)
        if tex_t.ndim != 3 or tex_t.shape[-1] != 3 or min(tex_t.shape) < 1:
            raise ValueError(f"texture must be (Ht, Wt, 3), got {tuple(tex_t.shape)}")
        uvs_t = torch.as_tensor(uvs).to(dev, torch.float32).contiguous()
        uvf_t = torch.as_tensor(uv_faces).to(dev).long().contiguous()
        if uvs_t.ndim != 2 or uvs_t.shape[1] != 2:
            raise ValueError(f"uvs must be (T, 2), got {tuple(uvs_t.shape)}")
        if uvf_t.shape != faces.shape:
            raise ValueError(
                f"uv_faces must have the faces' shape {tuple(faces.shape)}, "
                f"got {tuple(uvf_t.shape)}"
            )
        if uvf_t.numel() and (int(uvf_t.min()) < 0 or int(uvf_t.max()) >= uvs_t.shape[0]):
            raise ValueError("uv_faces index outside uvs")
    elif vertex_colors is not None:
        col = _as_float_colors(vertex_colors, "vertex_colors", dev)
        if col.shape != (N, 3):
            raise ValueError(f"vertex_colors must have shape ({N}, 3), got {tuple(col.shape)}")
        const_albedo = -1.0

    # per-vertex attributes [normal_cam, template, colour], one set per job when needed
    Ja = J if need_nrm else 1
    vattr = torch.cat(
        [n_cam.expand(Ja, N, 3), tpl.expand(Ja, N, 3), col.expand(Ja, N, 3)], dim=-1
    ).contiguous()
    vattr_job = torch.arange(J) if Ja == J else torch.zeros(J, dtype=torch.long)
    ldir = light.unit_direction()

    if backend == "auto":  # numba for the host's tensors
        backend = "cpu" if dev == torch.device("cpu") else "torch"
    if backend == "cpu":
        tex_scale = 1.0
        if tex_t.dtype == torch.uint8:  # sample a uint8 texture directly (4x less memory traffic)
            tex_np, tex_scale = np.ascontiguousarray(tex_t.cpu().numpy()), 1.0 / 255.0
        else:
            tex_np = np.ascontiguousarray(
                tex_t.detach().cpu().numpy().astype(np.float32, copy=False)
            )
        fid = fragments.face_ids.reshape(J, H, W).cpu().numpy()
        bary = fragments.bary.reshape(J, H, W, 3).cpu().float().numpy()
        depth = fragments.depth.reshape(J, H, W).cpu().float().numpy()
        out = np.zeros((J, H, W, C), np.float32)  # empty pixels stay 0 (and untouched)
        _shade_jobs(
            np.ascontiguousarray(fid), np.ascontiguousarray(bary), np.ascontiguousarray(depth),
            faces.cpu().numpy(), cam.cpu().numpy(), vattr.cpu().numpy(), vattr_job.numpy(),
            uvf_t.cpu().numpy(), uvs_t.cpu().numpy(), tex_np, tex_scale, use_tex,
            ldir, float(light.ambient), float(light.diffuse), float(const_albedo), offs, out,
        )  # fmt: skip
        images = torch.from_numpy(out).to(dev)
    elif backend == "torch":
        images = _shade_torch(
            fragments, faces, cam, vattr, vattr_job,
            uvf_t if use_tex else None, uvs_t if use_tex else None,
            _as_float_colors(tex_t, "texture", dev) if use_tex else None,
            ldir, light, const_albedo, offs, C,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown render_passes backend '{backend}'; use 'auto', 'cpu' or 'torch'")
    return RenderPasses(images=images.reshape(*lead, H, W, C), channels=tuple(channels))


def render(
    rig: Rig,
    vertices_world: Tensor,
    faces,
    *,
    image_size=None,
    backend: str = "auto",
    **pass_kwargs,
) -> tuple[Fragments, RenderPasses]:
    """:func:`rasterize` followed by :func:`render_passes` (keyword arguments go to the latter)."""
    frags = rasterize(rig, vertices_world, faces, image_size=image_size, backend=backend)
    return frags, render_passes(frags, rig, vertices_world, faces, **pass_kwargs)


# ==========================================================================================
# photos into the pinhole image space
# ==========================================================================================
@functools.lru_cache(maxsize=64)
def _undistort_maps(K_bytes: bytes, dist_bytes: bytes, size: tuple[int, int]):
    import cv2

    K = np.frombuffer(K_bytes, dtype=np.float64).reshape(3, 3)
    dist = np.frombuffer(dist_bytes, dtype=np.float64)
    return cv2.initUndistortRectifyMap(K, dist, None, K, size, cv2.CV_32FC1)


def _camera_maps(cam: Camera):
    return _undistort_maps(
        np.ascontiguousarray(cam.K, np.float64).tobytes(),
        np.ascontiguousarray(cam.dist, np.float64).tobytes(),
        tuple(int(s) for s in cam.image_size),
    )


def undistort_images(rig: Rig, images, interpolation: int | None = None):
    """Resample photos from the distorted camera image into the undistorted pinhole image
    of the same K (the space :func:`rasterize` renders in).

    images: (V, H, W, C) or (V, H, W), uint8 or float, numpy or torch; H, W must equal each
    camera's image size, or the rig's canvas (:func:`canvas_size`, each view's image in its
    top-left corner: see :func:`pad_views`) when its cameras differ in size. Returns the same
    type, dtype and shape; pixels that map outside the photo (or lie beyond the view's image
    on the canvas) are 0. The remap tables are cached per camera (K, dist, size).
    """
    import cv2

    is_tensor = isinstance(images, Tensor)
    arr = images.detach().cpu().numpy() if is_tensor else np.asarray(images)
    if arr.ndim not in (3, 4) or arr.shape[0] != len(rig):
        raise ValueError(f"images must be (V={len(rig)}, H, W[, C]), got {arr.shape}")
    interp = cv2.INTER_LINEAR if interpolation is None else interpolation
    orig_dtype = arr.dtype
    work = arr.astype(np.float32) if arr.dtype in (np.float16, np.bool_) else arr
    on_canvas = len({c.image_size for c in rig}) > 1 and arr.shape[1:3] == canvas_size(rig)[::-1]
    out = np.zeros_like(work) if on_canvas else np.empty_like(work)
    for i, cam in enumerate(rig):
        img = work[i]
        if on_canvas:  # this view's image is the top-left corner; beyond it stays 0
            img, out_i = img[: cam.height, : cam.width], out[i, : cam.height, : cam.width]
        else:
            out_i = out[i]
        if img.shape[1] != cam.width or img.shape[0] != cam.height:
            raise ValueError(
                f"image {i} is {img.shape[1]}x{img.shape[0]} but camera '{cam.name}' is "
                f"{cam.width}x{cam.height}; resize the rig with rig.with_image_size or the images"
            )
        if not np.any(cam.dist):
            out_i[...] = img
            continue
        m1, m2 = _camera_maps(cam)
        if img.ndim == 3 and img.shape[2] > 4:
            for c0 in range(0, img.shape[2], 4):
                chunk = np.ascontiguousarray(img[..., c0 : c0 + 4])
                r = cv2.remap(chunk, m1, m2, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                out_i[..., c0 : c0 + 4] = r.reshape(chunk.shape)
        else:
            r = cv2.remap(
                np.ascontiguousarray(img),
                m1,
                m2,
                interp,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            out_i[...] = r.reshape(img.shape)
    out = out.astype(orig_dtype, copy=False)
    if is_tensor:
        return torch.from_numpy(out).to(images.device)
    return out
