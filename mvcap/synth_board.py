"""Synthetic calibration captures: a ChArUco board or checkerboard moved through a camera rig.

One video (or image folder) per camera, rendered through the rig's lens distortion, with
the ground-truth rig and per-frame board poses, for testing :mod:`mvcap.calibrate` end to
end. Uses the synthetic studio's rig sampler and distortion (:mod:`mvcap.synth`). World
frame as there: Y up, the floor is the plane y = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .cameras import Camera, Rig
from .synth import RigConfig, _u, make_ring_rig

__all__ = ["BoardCaptureConfig", "BoardCapture", "generate_board_capture"]


# ==========================================================================================
# board captures for calibration (mvcap calibrate)
# ==========================================================================================
def _calibration_rig() -> RigConfig:
    # a compact 4-camera ring, wide lenses with off-centre principal points and k1/k2/p1/p2
    return RigConfig(
        num_cameras=4,
        radius_m=(1.8, 2.2),
        height_m=(1.2, 1.8),
        hfov_deg=(55.0, 65.0),
        image_size=(640, 480),
        distortion_k1=(-0.2, 0.1),
        distortion_k2=(-0.05, 0.05),
        tangential_p=(-0.0008, 0.0008),
        principal_offset_frac=0.03,
        look_at_height_m=0.7,
        look_at_jitter_m=0.1,
        azimuth_jitter_deg=12.0,
        roll_deg=2.0,
    )


@dataclass(frozen=True)
class BoardCaptureConfig:
    """Synthetic calibration footage: a board moved through random, plausible poses in front
    of a ring rig, filmed by every camera through its lens distortion, with ground truth.

    board: board name or TOML path (:func:`mvcap.calibrate.load_board`).
    num_frames: frames per camera. Every ``shared_every``-th frame is shared by two
      neighbouring cameras: the board stands within ``centre_jitter_m`` of the rig's aim
      point, facing between them, tilted by ``pair_tilt_deg`` (std). The other frames are
      close-ups for one camera at a time (in turn): the board centre lands at a random point
      of its image (inside ``image_margin``) at a random ``distance_m``, turned a random
      fraction ``neighbour_turn`` of the way towards a neighbouring camera and tilted away by
      ``closeup_tilt_deg`` about a random axis (tilted views pin down the principal point).
      Every board is rolled in its plane by up to ``roll_deg``.
    rig: the ring rig (off-centre principal points, k1/k2 and small p1/p2 distortion).
    floor_frame: a frame in which the board lies on the floor face up instead, centred on the
      world origin at a random heading (-1: none).
    supersample: the board is rendered on an n-times finer pixel grid and area-averaged
      (anti-aliasing that stays faithful for steeply tilted boards).
    blur_sigma_px / noise_std: ranges of per-image Gaussian blur and read noise (8-bit levels).
    format: "mp4" (one mp4v video per camera) or "png" (one folder of PNG frames per camera).
    """

    board: str = "charuco_7x10"
    num_frames: int = 96
    shared_every: int = 3
    fps: float = 10.0
    seed: int = 0
    rig: RigConfig = field(default_factory=_calibration_rig)
    distance_m: tuple[float, float] = (0.9, 2.0)
    neighbour_turn: tuple[float, float] = (0.0, 0.4)
    closeup_tilt_deg: tuple[float, float] = (10.0, 45.0)
    centre_jitter_m: float = 0.35
    pair_tilt_deg: float = 8.0
    roll_deg: float = 40.0
    image_margin: float = 0.08
    floor_frame: int = -1
    supersample: int = 2
    blur_sigma_px: tuple[float, float] = (0.3, 0.7)
    noise_std: tuple[float, float] = (1.0, 3.0)
    board_gain: tuple[float, float] = (0.7, 1.1)
    format: str = "mp4"

    def __post_init__(self):
        if self.format not in ("mp4", "png"):
            raise ValueError(f"format must be 'mp4' or 'png', got {self.format!r}")
        if self.num_frames < 1 or self.shared_every < 1:
            raise ValueError("num_frames and shared_every must be >= 1")
        if self.floor_frame >= self.num_frames:
            raise ValueError(f"floor_frame {self.floor_frame} must be < num_frames {self.num_frames}")


@dataclass(frozen=True)
class BoardCapture:
    """Written by :func:`generate_board_capture`. sources: camera name -> video / folder;
    rig: the ground-truth rig (also at ``rig_path``); board2world: (T, 4, 4) board poses
    (board frame -> world, metres); in_view: (T, V) bool, the board's printed side faces the
    camera and its centre projects into the image."""

    sources: dict
    rig_path: Path
    rig: Rig
    board2world: np.ndarray
    in_view: np.ndarray


def _unit(v):
    return v / np.linalg.norm(v)


def _sample_board_pose(rng, cfg: BoardCaptureConfig, board, rig: Rig, t: int) -> np.ndarray:
    """(4, 4) board -> world for frame t (see :class:`BoardCaptureConfig`)."""
    V = len(rig)
    bw, bh = board.size_m
    if t == cfg.floor_frame:
        yaw = rng.uniform(-np.pi, np.pi)
        c, s_ = math.cos(yaw), math.sin(yaw)
        x, y = np.array([c, 0.0, s_]), np.array([-s_, 0.0, c])
        R = np.stack([x, y, np.cross(x, y)], 1)  # z_b = x cross y = -Y: the face looks up
        M = np.eye(4)
        M[:3, :3] = R
        M[:3, 3] = -R @ np.array([bw / 2, bh / 2, 0.0])
        return M
    n = max(int(cfg.shared_every), 1)
    if (t + 1) % n != 0 or n == 1:
        c = (t - t // n) % V
        cam = rig[c]
        W, H = cam.image_size
        m = cfg.image_margin
        uv = np.array([rng.uniform(m, 1 - m) * W, rng.uniform(m, 1 - m) * H])
        ray = _unit(cam.R_world2cam.T @ np.linalg.solve(cam.K, np.array([uv[0], uv[1], 1.0])))
        C = cam.center_world
        centre = C + _u(rng, cfg.distance_m) * ray
        other = rig[(c + rng.choice([-1, 1])) % V].center_world
        w = _u(rng, cfg.neighbour_turn)
        normal = _unit((1 - w) * _unit(C - centre) + w * _unit(other - centre))
        tilt = np.deg2rad(_u(rng, cfg.closeup_tilt_deg))
    else:
        a = t // n % V
        Ca, Cb = rig[a].center_world, rig[(a + 1) % V].center_world
        j = cfg.centre_jitter_m
        centre = np.array([0.0, cfg.rig.look_at_height_m, 0.0]) + rng.uniform(-j, j, 3)
        normal = _unit(_unit(Ca - centre) + _unit(Cb - centre))
        tilt = np.deg2rad(rng.normal(0, cfg.pair_tilt_deg))
    axis = _unit(np.cross(normal, rng.normal(size=3)))
    normal = normal * math.cos(tilt) + np.cross(axis, normal) * math.sin(tilt)
    z = -_unit(normal)  # board z points into the board, away from the printed face
    down = np.array([0.0, -1.0, 0.0])
    y = _unit(down - (down @ z) * z)
    x = np.cross(y, z)
    roll = np.deg2rad(rng.uniform(-cfg.roll_deg, cfg.roll_deg))
    x, y = math.cos(roll) * x + math.sin(roll) * y, -math.sin(roll) * x + math.cos(roll) * y
    R = np.stack([x, y, z], 1)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = centre - R @ np.array([bw / 2, bh / 2, 0.0])
    return M


def _pixel_rays(cam: Camera, supersample: int = 1) -> np.ndarray:
    """(H n, W n, 3) float32 undistorted camera-frame rays (x, y, 1) through the pixel
    centres of an n-times finer grid (n = ``supersample``) of ``cam``'s image: exact at the
    camera's pixel centres, linear in between (the map is smooth: < 1e-3 px)."""
    W, H = cam.image_size
    n = int(supersample)
    u, v = np.meshgrid(np.arange(-1, W + 1, dtype=np.float64), np.arange(-1, H + 1, dtype=np.float64))
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-14)
    xy = cv2.undistortPoints(np.stack([u, v], -1).reshape(-1, 1, 2), cam.K, cam.dist, criteria=crit)
    xy = xy.reshape(H + 2, W + 2, 2)

    def upsample(a, axis, size):
        # fine pixel n i + j sits at coarse position i + (j + 0.5) / n - 0.5
        out = []
        for j in range(n):
            d = (j + 0.5) / n - 0.5
            lo = np.take(a, np.arange(1, size + 1), axis=axis)
            hi = np.take(a, np.arange(1, size + 1) + (1 if d >= 0 else -1), axis=axis)
            out.append((1 - abs(d)) * lo + abs(d) * hi)
        stacked = np.stack(out, axis=axis + 1)
        shape = list(a.shape)
        shape[axis] = size * n
        return stacked.reshape(shape)

    fine = upsample(upsample(xy, 1, W), 0, H)
    return np.concatenate([fine, np.ones(fine.shape[:2] + (1,))], -1).astype(np.float32)


def _board_background(rng, W, H) -> np.ndarray:
    """A static cluttered grey backdrop (H, W) float32 in [0, 1]."""
    low = rng.uniform(0.25, 0.75, (6, 8)).astype(np.float32)
    bg = cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC)
    for _ in range(14):
        x0, y0 = int(rng.integers(0, W)), int(rng.integers(0, H))
        w, h = int(rng.integers(10, W // 3)), int(rng.integers(10, H // 3))
        bg[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.1, 0.9)
    bg = cv2.GaussianBlur(bg, (0, 0), 1.0)
    return np.clip(bg * np.linspace(0.85, 1.1, H, dtype=np.float32)[:, None], 0, 1)


def _render_board(cam, rays, board2cam, pyramid, px_m, margin_m, board_size_m, gain, ss=1):
    """Render the board into one camera: every pixel's ray (of an ``ss``-times finer grid,
    then area-averaged) is intersected with the board plane and the texture sampled there
    (from the mip level matching the pixel footprint).

    cam: the camera at the fine resolution, rays its (H ss, W ss, 3) rays. Returns
    (premultiplied board image, coverage) as float32 crops (h, w) of the output image and
    the crop's (x0, y0) in output pixels, or None when the board is out of view."""
    W, H = cam.image_size
    R, t = board2cam[:3, :3], board2cam[:3, 3]
    # bounding box of the board in the image, when its outline projects cleanly into it
    bw, bh = board_size_m
    s = np.linspace(0, 1, 9)
    edge = np.concatenate([np.stack([s * bw, 0 * s], 1), np.stack([s * bw, 0 * s + bh], 1)])
    edge = np.concatenate([edge, np.stack([0 * s, s * bh], 1), np.stack([0 * s + bw, s * bh], 1)])
    edge = (edge - 0.5 * np.array([bw, bh])) * (1 + 2 * margin_m / min(bw, bh)) + 0.5 * np.array([bw, bh])
    pts = np.concatenate([edge, np.zeros((len(edge), 1))], 1)
    z = (pts @ R.T + t)[:, 2]
    x0, y0, x1, y1 = 0, 0, W, H
    if np.all(z > 0.05):
        proj, _ = cv2.projectPoints(pts, cv2.Rodrigues(R)[0], t, cam.K, cam.dist)
        proj = proj.reshape(-1, 2)
        if np.all((proj > -W) & (proj < 2 * W)):
            if proj[:, 0].max() < 0 or proj[:, 1].max() < 0 or proj[:, 0].min() >= W or proj[:, 1].min() >= H:
                return None
            x0, y0 = (max(0, int(np.floor(proj[:, k].min())) - 6) for k in (0, 1))
            x1, y1 = min(W, int(np.ceil(proj[:, 0].max())) + 7), min(H, int(np.ceil(proj[:, 1].max())) + 7)
    # align the crop to whole output pixels
    x0, y0 = x0 // ss * ss, y0 // ss * ss
    x1, y1 = min(W, -(-x1 // ss) * ss), min(H, -(-y1 // ss) * ss)
    dR = rays[y0:y1, x0:x1] @ R.astype(np.float32)  # ray . board axes
    tR = (t @ R).astype(np.float32)  # camera->board offset along the board axes
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = tR[2] / dR[..., 2]
    hit = np.isfinite(depth) & (depth > 0)
    xb = depth * dR[..., 0] - tR[0]  # board coordinates of the hit point
    yb = depth * dR[..., 1] - tR[1]
    tex_u = (xb + np.float32(margin_m)) / np.float32(px_m) - np.float32(0.5)
    tex_v = (yb + np.float32(margin_m)) / np.float32(px_m) - np.float32(0.5)
    tex_u[~hit] = -1e6
    tex_v[~hit] = -1e6
    xb[~hit] = 0
    yb[~hit] = 0
    inside = hit & (tex_u > 0) & (tex_v > 0) & (tex_u < pyramid[0].shape[1]) & (tex_v < pyramid[0].shape[0])
    if not inside.any():
        return None
    # mip level from the texture footprint of one pixel (every 4th pixel is plenty)
    k = 4 if min(tex_u.shape) > 8 else 1
    su, sv = tex_u[::k, ::k], tex_v[::k, ::k]
    gu = np.hypot(*np.gradient(su, axis=(0, 1))) / k if min(su.shape) > 1 else np.ones_like(su)
    gv = np.hypot(*np.gradient(sv, axis=(0, 1))) / k if min(sv.shape) > 1 else np.ones_like(sv)
    sub = inside[::k, ::k]
    foot = float(np.median(np.maximum(gu, gv)[sub])) if sub.any() else 1.0
    level = int(np.clip(np.floor(np.log2(max(foot, 1.0))), 0, len(pyramid) - 1))
    sc = np.float32(2.0**-level)  # cv2.pyrDown centres pixel i of a level on pixel 2i of the one below
    front = (-(R.T @ t))[2] < 0  # the camera is on the printed side
    sample = cv2.remap(pyramid[level], tex_u * sc, tex_v * sc, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = sample[..., 1]
    val = sample[..., 0] if front else np.float32(0.55)
    # a gentle shading gradient across the board
    shade = np.float32(gain) * (1 + np.float32(0.08 / bw) * xb - np.float32(0.06 / bh) * yb - np.float32(0.01))
    img = np.clip(val * shade, 0, 1) * alpha
    if ss > 1:
        size = ((x1 - x0) // ss, (y1 - y0) // ss)
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    return img, alpha, (x0 // ss, y0 // ss)


def generate_board_capture(
    out_dir, cfg: BoardCaptureConfig = BoardCaptureConfig(), progress: bool = True
) -> BoardCapture:
    """Write synthetic calibration footage (one video or PNG folder per camera), the
    ground-truth rig ``rig_gt.toml`` (and with a floor frame ``rig_gt_floor.toml``, the rig in
    the floor board's Y-up world) and ``board_gt.npz`` (board2world, in_view) into out_dir.

    Deterministic for a given config (same seed -> same images)."""
    from tqdm import tqdm

    from .calibrate import align_to_board, load_board
    from .rigio import save_rig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    board = load_board(cfg.board)
    rng = np.random.default_rng(cfg.seed)
    rig = make_ring_rig(cfg.rig, rng)
    V, T = len(rig), cfg.num_frames
    W, H = rig[0].image_size
    tex, px_m = board.texture(64, 0.5)
    margin_m = 0.5 * board.square_length
    alpha_tex = np.ones_like(tex, np.float32)
    level0 = np.stack([tex.astype(np.float32) / 255 * 0.82 + 0.1, alpha_tex], -1)
    pyramid = [level0]
    while min(pyramid[-1].shape[:2]) > 16:
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    poses = np.stack([_sample_board_pose(rng, cfg, board, rig, t) for t in range(T)])
    ss = max(int(cfg.supersample), 1)
    fine = [Rig((cam,)).with_image_size((W * ss, H * ss))[0] for cam in rig]
    rays = [_pixel_rays(cam, ss) for cam in rig]
    backgrounds = [_board_background(rng, W, H) for _ in range(V)]
    in_view = np.zeros((T, V), bool)
    centre_b = np.array([board.size_m[0] / 2, board.size_m[1] / 2, 0.0, 1.0])
    sources, writers = {}, {}
    for cam in rig:
        if cfg.format == "mp4":
            path = out_dir / f"{cam.name}.mp4"
            wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, (W, H), True)
            if not wr.isOpened():
                raise RuntimeError(f"OpenCV cannot write mp4v video {path}; use format='png'")
            writers[cam.name] = wr
        else:
            path = out_dir / cam.name
            path.mkdir(exist_ok=True)
        sources[cam.name] = path
    try:
        for t in tqdm(range(T), desc="board frames", disable=not progress, leave=False):
            gain = _u(rng, cfg.board_gain)
            for v, cam in enumerate(rig):
                Mc = np.eye(4)
                Mc[:3, :3], Mc[:3, 3] = cam.R_world2cam, cam.t_world2cam
                b2c = Mc @ poses[t]
                pc = b2c @ centre_b
                uvc = cam.K @ (pc[:3] / max(pc[2], 1e-9))
                front = (-(b2c[:3, :3].T @ b2c[:3, 3]))[2] < 0
                in_view[t, v] = bool(front and pc[2] > 0 and 0 <= uvc[0] < W and 0 <= uvc[1] < H)
                photo = backgrounds[v].copy()
                rendered = _render_board(
                    fine[v], rays[v], b2c, pyramid, px_m, margin_m, board.size_m, gain * rng.uniform(0.95, 1.05), ss
                )
                if rendered is not None:
                    img, a, (x0, y0) = rendered
                    crop = photo[y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]]
                    crop *= 1 - a
                    crop += img
                sigma = _u(rng, cfg.blur_sigma_px)
                if sigma > 0:
                    photo = cv2.GaussianBlur(photo, (0, 0), sigma)
                noise = rng.standard_normal(photo.shape, dtype=np.float32) * np.float32(_u(rng, cfg.noise_std))
                photo = np.clip(photo * 255 + noise + 0.5, 0, 255).astype(np.uint8)
                if cfg.format == "mp4":
                    writers[cam.name].write(cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR))
                else:
                    cv2.imwrite(str(sources[cam.name] / f"{t:06d}.png"), photo)
    finally:
        for wr in writers.values():
            wr.release()
    rig_path = out_dir / "rig_gt.toml"
    save_rig(rig, rig_path)
    if cfg.floor_frame >= 0:
        # the same rig in the world of the floor board (Y up), what --world-frame should recover
        save_rig(align_to_board(rig, poses[cfg.floor_frame], "y"), out_dir / "rig_gt_floor.toml")
    np.savez(out_dir / "board_gt.npz", board2world=poses, in_view=in_view, floor_frame=cfg.floor_frame)
    return BoardCapture(sources, rig_path, rig, poses, in_view)
