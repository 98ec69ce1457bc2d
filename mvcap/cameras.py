"""Camera model and projection.

Convention (stated once, used everywhere in mvcap):

* OpenCV pinhole model. World to camera: ``x_cam = R_world2cam @ x_world + t_world2cam``;
  the camera looks down +Z, +X is image right, +Y is image down.
* Pixel coordinates have their origin at the *centre* of the top-left pixel, so pixel
  ``(u, v)`` covers ``[u - 0.5, u + 0.5] x [v - 0.5, v + 0.5]`` (OpenCV's convention).
* Lens distortion is OpenCV's 5-parameter model ``(k1, k2, p1, p2, k3)``.
* ``image_size`` is ``(width, height)`` in pixels.

All functions are pure and differentiable in torch. Shapes use V for views, N for points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from mvcap.errors import MvcapError

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported inside the functions that use it: reading, writing and checking rigs (`mvcap rig
# show/convert`, mvcap.rigio) then starts without torch's ~2 s import.

__all__ = [
    "Camera",
    "Rig",
    "project",
    "project_per_view",
    "projection_bounds",
    "world_to_cam",
    "world_to_cam_per_view",
    "cam_to_pixels",
    "distort_normalized",
    "undistort_normalized",
    "undistort_points",
    "camera_centers",
    "pixel_rays",
    "rotvec_to_rotmat_np",
    "rotmat_to_rotvec_np",
]

_ROT_TOL = 1e-4


class RigError(MvcapError):
    """A rig or camera description is invalid; the message names the camera and field."""


def rotvec_to_rotmat_np(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues vector (3,) -> rotation matrix (3, 3), numpy float64."""
    rotvec = np.asarray(rotvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rotvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def rotmat_to_rotvec_np(R: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> Rodrigues vector (3,), numpy float64 (robust near pi)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_rotvec()


MAX_IMAGE_SIDE = 1 << 16  # pixels; larger sides are not real cameras (and overflow buffers)


def _image_size(name: str, image_size) -> tuple[int, int]:
    """(width, height) as two positive whole numbers of pixels, or a RigError saying why not."""
    try:
        size = np.asarray(image_size)
        if size.dtype.kind not in "biuf":
            raise TypeError(f"values of type {size.dtype}")
        size = size.astype(np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise RigError(
            f"camera '{name}': field 'image_size' must be (width, height) in pixels, got {image_size!r} "
            f"({str(exc).splitlines()[0][:200]})"
        ) from None
    if size.size != 2 or not np.all(np.isfinite(size)) or np.any(size < 1) or np.any(size > MAX_IMAGE_SIDE):
        raise RigError(
            f"camera '{name}': field 'image_size' must be (width, height) with finite positive values "
            f"up to {MAX_IMAGE_SIDE} pixels, got {np.asarray(image_size).tolist()}"
        )
    if np.any(np.abs(size - np.round(size)) > 1e-6):
        raise RigError(f"camera '{name}': field 'image_size' must be whole pixels, got {size.tolist()}")
    return int(round(size[0])), int(round(size[1]))


@dataclass(frozen=True)
class Camera:
    """One calibrated camera. Arrays are float64 numpy for exact file round trips.

    K: (3, 3) intrinsics; dist: (5,) k1, k2, p1, p2, k3; R_world2cam: (3, 3);
    t_world2cam: (3,) metres; image_size: (width, height) pixels.
    """

    name: str
    K: np.ndarray
    dist: np.ndarray
    R_world2cam: np.ndarray
    t_world2cam: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not name.strip():
            raise RigError(f"camera name must be a non-empty string, got {name!r}")

        def fail(field, msg):
            raise RigError(f"camera '{name}': field '{field}' {msg}")

        arrays = {}
        for attr in ("K", "dist", "R_world2cam", "t_world2cam"):
            try:
                value = np.asarray(getattr(self, attr))
                if value.dtype.kind not in "biuf":  # strings, objects, complex: not calibration values
                    raise TypeError(f"values of type {value.dtype}")
                arrays[attr] = value.astype(np.float64)
            except (TypeError, ValueError) as exc:
                fail(attr, f"must hold real numbers ({str(exc).splitlines()[0][:200]})")
        K, R = arrays["K"], arrays["R_world2cam"]
        dist, t = arrays["dist"].reshape(-1), arrays["t_world2cam"].reshape(-1)
        if K.shape != (3, 3):
            fail("K", f"must be a 3x3 matrix, got shape {K.shape}")
        if not np.all(np.isfinite(K)):
            fail("K", f"contains NaN or infinite values: {K.tolist()}")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            fail("K", f"focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
        if not np.allclose(K[2], [0, 0, 1]) or abs(K[1, 0]) > 0:
            fail("K", f"last row must be [0, 0, 1] and K[1,0] must be 0, got {K.tolist()}")
        if abs(K[0, 1]) > 1e-9 * K[0, 0]:
            # OpenCV's projection ignores skew; accepting it would silently misproject.
            fail("K", f"has skew K[0,1]={K[0, 1]}; mvcap (like OpenCV) supports zero skew only")
        if dist.size > 5 or dist.size not in (0, 1, 2, 4, 5):
            fail("dist", f"needs 5 values (k1, k2, p1, p2, k3) (or fewer, zero-padded), got {dist.size}")
        if not np.all(np.isfinite(dist)):
            fail("dist", f"contains NaN or infinite values: {dist.tolist()}")
        dist = np.pad(dist, (0, 5 - dist.size))
        if R.shape != (3, 3):
            fail("R_world2cam", f"must be a 3x3 matrix, got shape {R.shape}")
        if not np.all(np.isfinite(R)):
            # NaN compares false with every tolerance, so it has to be refused explicitly
            fail("R_world2cam", "contains NaN or infinite values; the file's rotation is not a valid rotation")
        ortho_err = float(np.abs(R @ R.T - np.eye(3)).max())
        det = float(np.linalg.det(R))
        if ortho_err > _ROT_TOL or abs(det - 1.0) > 10 * _ROT_TOL:
            fail(
                "R_world2cam",
                f"is not a rotation matrix (max |R R^T - I| = {ortho_err:.2e}, det = "
                f"{det:.4f}, must be orthonormal with det +1); check that the file stores a world-to-camera rotation",
            )
        if t.shape != (3,):
            fail("t_world2cam", f"must have 3 values, got {t.size}")
        if not np.all(np.isfinite(t)):
            fail("t_world2cam", f"contains NaN or infinite values: {t.tolist()}")
        object.__setattr__(self, "image_size", _image_size(name, self.image_size))
        for attr, value in (("K", K), ("dist", dist), ("R_world2cam", R), ("t_world2cam", t)):
            object.__setattr__(self, attr, value)

    @property
    def center_world(self) -> np.ndarray:
        """(3,) camera centre in world coordinates: ``C = -R^T t``."""
        return -self.R_world2cam.T @ self.t_world2cam

    @property
    def width(self) -> int:
        return self.image_size[0]

    @property
    def height(self) -> int:
        return self.image_size[1]


@dataclass(frozen=True)
class Rig:
    """A set of calibrated cameras, stacked as tensors (float64) for batched projection.

    names: V camera names; K (V, 3, 3); dist (V, 5); R_world2cam (V, 3, 3);
    t_world2cam (V, 3); image_size (V, 2) int64 (width, height).
    """

    cameras: tuple[Camera, ...]

    def __post_init__(self):
        try:
            cams = tuple(self.cameras)
        except TypeError:
            raise RigError(f"a rig is a sequence of Camera objects, got {type(self.cameras).__name__}") from None
        if not cams:
            raise RigError("a rig needs at least one camera")
        wrong = [type(c).__name__ for c in cams if not isinstance(c, Camera)]
        if wrong:
            raise RigError(f"a rig is a sequence of Camera objects, got {wrong[0]}")
        names = [c.name for c in cams]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RigError(f"camera names must be unique; repeated: {dupes}")
        object.__setattr__(self, "cameras", cams)

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, names, K, dist, R_world2cam, t_world2cam, image_size) -> Rig:
        """Build from stacked arrays (V, ...) as stored in session files."""
        K, dist, R, t, size = (np.asarray(a) for a in (K, dist, R_world2cam, t_world2cam, image_size))
        return cls(tuple(Camera(str(n), K[i], dist[i], R[i], t[i], size[i]) for i, n in enumerate(names)))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Stacked float64 arrays: names, K, dist, R_world2cam, t_world2cam, image_size."""
        return {
            "names": np.array(self.names),
            "K": np.stack([c.K for c in self.cameras]),
            "dist": np.stack([c.dist for c in self.cameras]),
            "R_world2cam": np.stack([c.R_world2cam for c in self.cameras]),
            "t_world2cam": np.stack([c.t_world2cam for c in self.cameras]),
            "image_size": np.array([c.image_size for c in self.cameras], dtype=np.int64),
        }

    # access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cameras)

    def __iter__(self):
        return iter(self.cameras)

    def __getitem__(self, key: int | str) -> Camera:
        if isinstance(key, str):
            return self.cameras[self.index(key)]
        return self.cameras[key]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise RigError(f"no camera named '{name}' in the rig; cameras are {list(self.names)}") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def subset(self, names: Sequence[str]) -> Rig:
        """A rig with only the named cameras, in the given order."""
        return Rig(tuple(self[n] for n in names))

    def with_image_size(self, image_size: tuple[int, int]) -> Rig:
        """Rescale every camera to a new image size (intrinsics scaled, same field of view)."""
        cams = []
        for c in self.cameras:
            sx, sy = image_size[0] / c.width, image_size[1] / c.height
            K = c.K.copy()
            K[0] *= sx
            K[1] *= sy
            # keep the pixel-centre convention: u' + 0.5 = sx (u + 0.5)
            K[0, 2] = sx * (c.K[0, 2] + 0.5) - 0.5
            K[1, 2] = sy * (c.K[1, 2] + 0.5) - 0.5
            cams.append(replace(c, K=K, image_size=tuple(image_size)))
        return Rig(tuple(cams))

    def cropped(self, boxes: np.ndarray, sizes: np.ndarray) -> Rig:
        """Each camera seeing only a box of its image, resampled to a new size: boxes (V, 4)
        x0, y0, w, h pixels (the box's pixels x0..x0+w-1, y0..y0+h-1), sizes (V, 2) the new
        (width, height). Pixel centres keep the convention of :meth:`with_image_size`:
        u' + 0.5 = s (u - x0 + 0.5) with s = new width / w (likewise v)."""
        boxes, sizes = np.asarray(boxes, np.int64), np.asarray(sizes, np.int64)
        if boxes.shape != (len(self), 4) or sizes.shape != (len(self), 2):
            raise ValueError(f"boxes must be ({len(self)}, 4) and sizes ({len(self)}, 2), "
                             f"got {boxes.shape} and {sizes.shape}")  # fmt: skip
        if (boxes[:, 2:] < 1).any() or (sizes < 1).any():
            raise ValueError("crop boxes and sizes must be at least 1 pixel wide and high")
        cams = []
        for c, (x0, y0, w, h), (W, H) in zip(self.cameras, boxes, sizes):
            sx, sy = W / w, H / h
            K = c.K.copy()
            K[0] *= sx
            K[1] *= sy
            K[0, 2] = sx * (c.K[0, 2] - x0 + 0.5) - 0.5
            K[1, 2] = sy * (c.K[1, 2] - y0 + 0.5) - 0.5
            cams.append(replace(c, K=K, image_size=(int(W), int(H))))
        return Rig(tuple(cams))

    def without_distortion(self) -> Rig:
        """The same rig with zero lens distortion (the undistorted pinhole image space)."""
        return Rig(tuple(replace(c, dist=np.zeros(5)) for c in self.cameras))

    # stacked tensors ----------------------------------------------------------------------
    def tensors(self, device="cpu", dtype=None) -> dict[str, Tensor]:
        """K (V,3,3), dist (V,5), R_world2cam (V,3,3), t_world2cam (V,3), image_size (V,2);
        dtype default torch.float32."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        a = self.to_arrays()
        out = {
            k: torch.as_tensor(a[k], dtype=dtype, device=device) for k in ("K", "dist", "R_world2cam", "t_world2cam")
        }
        out["image_size"] = torch.as_tensor(a["image_size"], device=device)
        return out

    def project(self, points_world: Tensor, distort: bool = True) -> Tensor:
        """Project world points into every view. (..., N, 3) -> (..., V, N, 2) pixels."""
        return project(self, points_world, distort=distort)


# ------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------
def _rig_tensors(rig: Rig, like: Tensor) -> dict[str, Tensor]:
    return rig.tensors(device=like.device, dtype=like.dtype if like.is_floating_point() else None)


def world_to_cam(points_world: Tensor, R_world2cam: Tensor, t_world2cam: Tensor) -> Tensor:
    """(..., N, 3) world points, R (V, 3, 3), t (V, 3) -> (..., V, N, 3) camera coordinates."""
    import torch

    return torch.einsum("vij,...nj->...vni", R_world2cam, points_world) + t_world2cam[:, None, :]


def world_to_cam_per_view(points_world: Tensor, R_world2cam: Tensor, t_world2cam: Tensor) -> Tensor:
    """Per-view point sets: (..., V, N, 3) world -> (..., V, N, 3) camera coordinates."""
    import torch

    return torch.einsum("vij,...vnj->...vni", R_world2cam, points_world) + t_world2cam[:, None, :]


def distort_normalized(xy: Tensor, dist: Tensor) -> Tensor:
    """Apply OpenCV distortion to normalised coordinates. xy (..., V, N, 2), dist (V, 5)."""
    import torch

    k1, k2, p1, p2, k3 = (dist[:, i, None] for i in range(5))  # each (V, 1)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], dim=-1)


def undistort_normalized(xy_distorted: Tensor, dist: Tensor, iterations: int = 20) -> Tensor:
    """Invert :func:`distort_normalized` by fixed-point iteration (as cv2.undistortPoints)."""
    import torch

    k1, k2, p1, p2, k3 = (dist[:, i, None] for i in range(5))
    xd, yd = xy_distorted[..., 0], xy_distorted[..., 1]
    x, y = xd, yd
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (xd - dx) / radial
        y = (yd - dy) / radial
    return torch.stack([x, y], dim=-1)


def cam_to_pixels(points_cam: Tensor, K: Tensor, dist: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Camera-frame points (..., V, N, 3) -> pixels (..., V, N, 2). K (V,3,3), dist (V,5) or None.

    Points at or behind the camera get their depth clamped to ``eps`` (they project far
    outside the image) so gradients stay finite; callers mask them by depth.
    """
    import torch

    z = points_cam[..., 2:3].clamp(min=eps)
    xy = points_cam[..., :2] / z
    if dist is not None:
        xy = distort_normalized(xy, dist)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    return torch.stack([fx * xy[..., 0] + cx, fy * xy[..., 1] + cy], dim=-1)


def projection_bounds(rig: Rig, points_world: Tensor) -> np.ndarray:
    """(V, 5) float64 per camera: the pinhole pixel bounds ``lo_x, lo_y, hi_x, hi_y`` of the
    points (N, 3) in front of it (inf where none is) and their smallest depth ``z_min``
    (metres, any sign). Computed where the points are; only these numbers are read back."""
    import torch

    p = points_world.detach().double()
    cams = rig.tensors(device=p.device, dtype=torch.float64)
    xyz = world_to_cam(p, cams["R_world2cam"], cams["t_world2cam"])  # (V, N, 3)
    front = xyz[..., 2:] > 1e-6
    uv = (xyz / torch.where(front, xyz[..., 2:], 1.0)) @ cams["K"].transpose(-1, -2)
    lo = torch.where(front, uv[..., :2], float("inf")).amin(1)
    hi = torch.where(front, uv[..., :2], -float("inf")).amax(1)
    return torch.cat([lo, hi, xyz[..., 2].amin(1, keepdim=True)], 1).cpu().numpy()


def project(rig: Rig, points_world: Tensor, distort: bool = True) -> Tensor:
    """Project world points into every view of the rig.

    points_world: (..., N, 3) metres. Returns (..., V, N, 2) pixels (distorted image space
    if ``distort``, else the undistorted pinhole image).
    """
    if points_world.shape[-1] != 3:
        raise ValueError(f"points_world must have shape (..., N, 3), got {tuple(points_world.shape)}")
    cams = _rig_tensors(rig, points_world)
    cam = world_to_cam(points_world, cams["R_world2cam"], cams["t_world2cam"])
    return cam_to_pixels(cam, cams["K"], cams["dist"] if distort else None)


def project_per_view(rig: Rig, points_world: Tensor, distort: bool = True) -> Tensor:
    """Project a different point set into each view: (..., V, N, 3) -> (..., V, N, 2) pixels."""
    if points_world.shape[-1] != 3 or points_world.shape[-3] != len(rig):
        raise ValueError(f"points_world must have shape (..., V={len(rig)}, N, 3), got {tuple(points_world.shape)}")
    cams = _rig_tensors(rig, points_world)
    cam = world_to_cam_per_view(points_world, cams["R_world2cam"], cams["t_world2cam"])
    return cam_to_pixels(cam, cams["K"], cams["dist"] if distort else None)


def undistort_points(rig: Rig, uv_pixels: Tensor, iterations: int = 20) -> Tensor:
    """Distorted pixels (..., V, N, 2) -> pixels of the undistorted pinhole image (same K)."""
    import torch

    cams = _rig_tensors(rig, uv_pixels)
    K = cams["K"]
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    xy = torch.stack([(uv_pixels[..., 0] - cx) / fx, (uv_pixels[..., 1] - cy) / fy], -1)
    xy = undistort_normalized(xy, cams["dist"], iterations)
    return torch.stack([fx * xy[..., 0] + cx, fy * xy[..., 1] + cy], dim=-1)


def camera_centers(rig: Rig, dtype=None, device="cpu") -> Tensor:
    """(V, 3) camera centres in world coordinates (dtype default torch.float32)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    return torch.as_tensor(np.stack([c.center_world for c in rig]), dtype=dtype, device=device)


def pixel_rays(rig: Rig, uv_pixels: Tensor, distorted: bool = True) -> tuple[Tensor, Tensor]:
    """World-space rays through pixels. uv_pixels (..., V, N, 2) ->
    (origins (..., V, N, 3), unit directions (..., V, N, 3))."""
    import torch

    cams = _rig_tensors(rig, uv_pixels)
    uv = undistort_points(rig, uv_pixels) if distorted else uv_pixels
    K = cams["K"]
    y = (uv[..., 1] - K[:, 1, 2, None]) / K[:, 1, 1, None]
    x = (uv[..., 0] - K[:, 0, 2, None]) / K[:, 0, 0, None]
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
    d_world = torch.einsum("vji,...vnj->...vni", cams["R_world2cam"], d_cam)  # R^T d
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    origins = camera_centers(rig, uv.dtype, uv.device)[:, None, :].expand_as(d_world)
    return origins, d_world
