"""Board calibration: ChArUco or checkerboard videos / image folders -> a calibrated rig.

Pipeline (one video file or one image folder per camera, found and read by
:mod:`mvcap.sources`; frames synchronised by index: a video's decoded order, an image's
file-name number):

1. **Detection** per camera: OpenCV's ChArUco detector with its default parameters (about
   20x faster than aniposelib's settings, same accuracy), or ``findChessboardCornersSB`` for
   checkerboards, backed up by the classic ``findChessboardCorners`` where SB misses the
   board (image folders by default), both refined by ``cornerSubPix`` at full resolution
   (the corner order is normalised to the board's own so that every camera labels a corner
   alike; see :meth:`Board.detect`).
2. **Intrinsics** per camera with the full model (fx, fy, cx, cy, k1, k2, p1, p2, k3) by
   ``cv2.calibrateCameraExtended`` on a diverse subset of the frames with enough corners, one
   round of outlier frames dropped; or held as given (``intrinsics``: a file from
   :func:`calibrate_intrinsics_only`, which calibrates lenses alone, one camera at a time).
   A quality check (:func:`check_intrinsics`) warns, naming the camera and what to film,
   when they are poorly constrained (few views, the board never near the image corners, a
   principal point or distortion unlike a real lens, a large uncertainty).
3. **Extrinsics**: per-frame board poses (``solvePnP``) of cameras that see the board at the
   same time give the relative poses along a maximum spanning tree of the camera graph;
   aniposelib's iterative bundle adjustment then refines them with the intrinsics held
   (aniposelib's own camera model has fx = fy, the principal point at the image centre and
   k1 only; the error would move into the extrinsics).
4. **World frame**: camera 0's frame, or with ``world_frame`` the board as it lies on the
   floor in that frame: the board plane becomes the floor, its normal the up axis (+Y for
   mvcap's Y-up world, or +Z for anipose/Pose2Sim-style worlds), its origin corner the
   world origin, its x axis the world X.
5. **Report** per camera: frames read / with the board / used, reprojection error (median
   and 95th percentile, of the intrinsic fit and of the calibrated rig) and a picture of
   detections and reprojections.

Board frame (OpenCV's): origin at the board's top-left outer corner, x along the squares'
rows, y down the columns, z into the board (a camera that sees the printed face is at z < 0).
Corner ``k`` of a board with ``squares_x`` columns is the inner corner
``((k % (squares_x - 1) + 1) * square_length, (k // (squares_x - 1) + 1) * square_length, 0)``.

Outputs are written only once everything succeeded (temporary names, then renames), so a
failed run never leaves a rig file or report that looks complete.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import sources as sources_mod
from .cameras import Camera, Rig
from .config import read_text
from .errors import MvcapError
from .resources import resource_path
from .sources import FrameReader, SourceInfo, check_gaps, probe_sources

__all__ = [
    "CalibrationError",
    "Board",
    "BOARD_DIR",
    "list_boards",
    "load_board",
    "CalibrateConfig",
    "load_calibrate_config",
    "resolve_sources",
    "iter_frames",
    "BoardDetections",
    "detect_source",
    "CameraIntrinsics",
    "calibrate_intrinsics",
    "QualityConfig",
    "IntrinsicsQuality",
    "check_intrinsics",
    "calibrate_extrinsics",
    "board_poses_world",
    "world_from_floor_board",
    "align_to_board",
    "CameraReport",
    "CalibrationResult",
    "calibrate",
    "format_report",
    "IntrinsicsResult",
    "calibrate_intrinsics_only",
    "LensIntrinsics",
    "save_intrinsics",
    "load_intrinsics",
    "RigDifference",
    "compare_rigs",
    "format_comparison",
    "write_outputs",
]

BOARD_DIR = resource_path("calibration/boards", must_exist=False)  # shipped boards
CLASSIC_MAX_SIDE = 1600  # the classic checkerboard detector runs on photos downscaled to this long side


class CalibrationError(MvcapError):
    """Calibration input the user can fix (board, sources, too few detections); the message
    says what is wrong and how to fix it."""


# ==========================================================================================
# boards
# ==========================================================================================
@dataclass(frozen=True)
class Board:
    """A calibration board (lengths in metres).

    kind: "charuco" or "checkerboard"; squares_x / squares_y: squares along x (a row) and y;
    marker_length and dictionary (e.g. "DICT_4X4_50"): ChArUco only; legacy_pattern:
    OpenCV < 4.6 ChArUco layout (boards with an even number of rows printed by old tools).
    """

    name: str
    kind: str
    squares_x: int
    squares_y: int
    square_length: float
    marker_length: float = 0.0
    dictionary: str = ""
    legacy_pattern: bool = False

    def __post_init__(self):
        def fail(msg):
            raise CalibrationError(f"board '{self.name}': {msg}")

        if self.kind not in ("charuco", "checkerboard"):
            fail(f"type must be 'charuco' or 'checkerboard', got {self.kind!r}")
        if int(self.squares_x) < 3 or int(self.squares_y) < 3:
            fail(f"needs at least 3x3 squares, got squares_x={self.squares_x}, squares_y={self.squares_y}")
        if not self.square_length > 0:
            fail(f"square_length must be positive (metres), got {self.square_length}")
        if self.square_length > 1.0:
            fail(f"square_length is {self.square_length} m; lengths are in metres (25 mm = 0.025)")
        if self.kind == "charuco":
            if not 0 < self.marker_length < self.square_length:
                fail(
                    f"marker_length must be positive and smaller than square_length ({self.square_length}), "
                    f"got {self.marker_length}"
                )
            names = sorted(n for n in dir(cv2.aruco) if n.startswith("DICT_"))
            if self.dictionary not in names:
                fail(f"unknown ArUco dictionary {self.dictionary!r}; valid: {', '.join(names)}")
            n_markers = (self.squares_x * self.squares_y) // 2
            dict_size = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary)).bytesList.shape[0]
            if n_markers > dict_size:
                fail(f"needs {n_markers} markers but {self.dictionary} has only {dict_size}")
        elif (self.squares_x + self.squares_y) % 2 == 0:
            # with an odd + odd or even + even layout a half turn maps the board onto itself, so
            # two cameras could label the same corner differently
            fail(
                f"a checkerboard needs an odd number of squares along one side and an even number along "
                f"the other (got {self.squares_x}x{self.squares_y}); otherwise its orientation is ambiguous"
            )
        object.__setattr__(self, "squares_x", int(self.squares_x))
        object.__setattr__(self, "squares_y", int(self.squares_y))
        object.__setattr__(self, "square_length", float(self.square_length))
        object.__setattr__(self, "marker_length", float(self.marker_length))

    # geometry -----------------------------------------------------------------------------
    @property
    def inner_size(self) -> tuple[int, int]:
        """(columns, rows) of inner corners."""
        return self.squares_x - 1, self.squares_y - 1

    @property
    def num_corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    @property
    def size_m(self) -> tuple[float, float]:
        """(width, height) of the squared area in metres."""
        return self.squares_x * self.square_length, self.squares_y * self.square_length

    @property
    def corners_board(self) -> np.ndarray:
        """(M, 3) float64 inner-corner positions in the board frame, metres (z = 0)."""
        cx, cy = self.inner_size
        i, j = np.meshgrid(np.arange(cx), np.arange(cy))
        xy = np.stack([i.ravel() + 1, j.ravel() + 1], 1) * self.square_length
        return np.concatenate([xy, np.zeros((len(xy), 1))], 1)

    def cv_board(self):
        """The ``cv2.aruco.CharucoBoard`` (ChArUco boards only)."""
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        b = cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_length, self.marker_length, d)
        b.setLegacyPattern(bool(self.legacy_pattern))
        return b

    def texture(self, pixels_per_square: int = 64, margin_squares: float = 0.5) -> tuple[np.ndarray, float]:
        """The printed board as a uint8 grey image with a white margin, and the pixel size in
        metres. Pixel ``(u, v)`` (centre convention) is board point
        ``((u + 0.5) * px - margin, (v + 0.5) * px - margin)``, margin = ``margin_squares``
        squares."""
        p = int(pixels_per_square)
        W, H = self.squares_x * p, self.squares_y * p
        if self.kind == "charuco":
            img = self.cv_board().generateImage((W, H), marginSize=0, borderBits=1)
        else:
            j, i = np.mgrid[0:H, 0:W] // p
            img = np.where((i + j) % 2 == 0, 0, 255).astype(np.uint8)  # square (0, 0) black
        m = round(margin_squares * p)
        img = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT, value=255)
        return img, self.square_length / p

    # detection ----------------------------------------------------------------------------
    def detector(self, fallback: bool = True):
        """A reusable detector callable ``gray (H, W) uint8 -> (ids (n,) int, uv_pixels (n, 2),
        method)``; method names the detector that found the board ("charuco", "sb" or
        "classic" for checkerboards) or is "" when nothing was found. ``fallback``: try
        OpenCV's classic checkerboard detector when ``findChessboardCornersSB`` fails."""
        if self.kind == "charuco":
            det = cv2.aruco.CharucoDetector(self.cv_board())  # OpenCV's default parameters

            def detect(gray):
                corners, ids, _, _ = det.detectBoard(gray)
                if ids is None or len(ids) == 0:
                    return np.zeros(0, np.int64), np.zeros((0, 2)), ""
                return ids.reshape(-1).astype(np.int64), corners.reshape(-1, 2).astype(np.float64), "charuco"

            return detect

        def detect(gray):
            return self._detect_checkerboard(gray, fallback)

        return detect

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corners in one grey image: (ids (n,) int64, uv_pixels (n, 2) float64)."""
        return self.detector()(gray)[:2]

    def _detect_checkerboard(self, gray, fallback: bool = True):
        cx, cy = self.inner_size
        method = "sb"
        ok, corners = cv2.findChessboardCornersSB(gray, (cx, cy))
        if not ok and fallback:
            # the classic detector finds boards SB misses (uneven light, a shadow across the
            # board, low contrast); it is slow on large photos, so it runs on a copy of at most
            # CLASSIC_MAX_SIDE pixels and cornerSubPix below refines at full resolution
            method = "classic"
            s = min(1.0, CLASSIC_MAX_SIDE / max(gray.shape[:2]))
            small = gray if s == 1.0 else cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
            ok, corners = cv2.findChessboardCorners(small, (cx, cy), flags=flags)
            if ok:
                corners = (corners.astype(np.float64) + 0.5) / s - 0.5  # pixel centres at integers
        if not ok:
            return np.zeros(0, np.int64), np.zeros((0, 2)), ""
        grid = corners.reshape(cy, cx, 2).astype(np.float64)
        # SB's own sub-pixel positions can carry a bias of ~0.1 px at some scales, the classic
        # detector's (on a downscaled copy) a pixel or more; a cornerSubPix pass with a window
        # of about a third of a square removes both
        spacing = float(np.median(np.linalg.norm(np.diff(grid, axis=1), axis=-1)))
        half = int(np.clip(0.3 * spacing, 2, 8))
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
        refined = cv2.cornerSubPix(gray, grid.reshape(-1, 1, 2).astype(np.float32), (half, half), (-1, -1), crit)
        grid = refined.reshape(cy, cx, 2).astype(np.float64)
        # handedness: seen from the printed side, board x then y turn clockwise in the image
        # (image y points down); a mirrored labelling turns the other way
        a, b = grid[0, -1] - grid[0, 0], grid[-1, 0] - grid[0, 0]
        if a[0] * b[1] - a[1] * b[0] < 0:
            grid = grid[:, ::-1]
        # half turn: the square between the first four corners is black on the board (square
        # (1, 1)); the one between the last four is white (squares_x + squares_y is odd)
        if _quad_mean(gray, grid[:2, :2]) > _quad_mean(gray, grid[-2:, -2:]):
            grid = grid[::-1, ::-1]
        return np.arange(self.num_corners), grid.reshape(-1, 2), method


def _quad_mean(gray, quad) -> float:
    """Mean intensity in a small disc at the centre of a 2x2 block of corners."""
    c = quad.reshape(4, 2).mean(0)
    r = max(1, int(0.2 * min(np.linalg.norm(quad[0, 0] - quad[1, 1]), np.linalg.norm(quad[0, 1] - quad[1, 0]))))
    x0, y0 = int(round(c[0])), int(round(c[1]))
    patch = gray[max(0, y0 - r) : y0 + r + 1, max(0, x0 - r) : x0 + r + 1]
    return float(patch.mean()) if patch.size else 0.0


def list_boards() -> list[str]:
    """Names of the boards shipped in ``calibration/boards``."""
    return sorted(p.stem for p in BOARD_DIR.glob("*.toml"))


_BOARD_KEYS = {"type", "squares_x", "squares_y", "square_length", "marker_length", "dictionary", "legacy_pattern"}


def load_board(name_or_path: str | Path) -> Board:
    """A board from a TOML file, or a shipped board's name (``charuco_5x7`` ->
    ``calibration/boards/charuco_5x7.toml``). An unknown name lists the shipped boards."""
    if isinstance(name_or_path, Board):
        return name_or_path
    path = Path(name_or_path)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        path = BOARD_DIR / f"{path.name}.toml"
    if not path.exists():
        raise CalibrationError(
            f"unknown board '{name_or_path}': no such file, and not one of the shipped boards "
            f"({', '.join(list_boards()) or 'none'}); pass a board TOML path or one of those names"
        )
    text = read_text(path, "board file", CalibrationError)
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise CalibrationError(f"board file {path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - _BOARD_KEYS)
    if unknown:
        raise CalibrationError(f"board file {path}: unknown key(s) {unknown}; valid: {sorted(_BOARD_KEYS)}")
    missing = [k for k in ("type", "squares_x", "squares_y", "square_length") if k not in data]
    if data.get("type") == "charuco":
        missing += [k for k in ("marker_length", "dictionary") if k not in data]
    if missing:
        raise CalibrationError(f"board file {path}: missing key(s) {missing}")
    try:
        return Board(
            name=path.stem,
            kind=str(data["type"]),
            squares_x=int(data["squares_x"]),
            squares_y=int(data["squares_y"]),
            square_length=float(data["square_length"]),
            marker_length=float(data.get("marker_length", 0.0)),
            dictionary=str(data.get("dictionary", "")),
            legacy_pattern=bool(data.get("legacy_pattern", False)),
        )
    except CalibrationError as exc:
        raise CalibrationError(f"board file {path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"board file {path}: {exc}") from None


# ==========================================================================================
# config
# ==========================================================================================
@dataclass(frozen=True)
class QualityConfig:
    """When fitted intrinsics count as poorly constrained (:func:`check_intrinsics`): each
    threshold crossed is a warning naming the camera and what to film (never an error).

    min_frames: views of the board used (fewer: focal length, principal point and distortion
      trade off against each other; 10-20 varied views is the usual advice).
    min_coverage: fraction of the image area inside the board's outline in at least one view
      (the distortion is only measured where the board was; 8-12 views spread over the image
      cover 45-60 %); any border cell of a 3x3 grid over the image without a corner warns too.
    max_principal_offset: principal point off the image centre by more than this fraction of
      the width / height (real sensors sit within a few %; 10 % almost always means the
      principal point traded off against the board poses: too little tilt).
    max_radial: |k1| or |k2| above this (ordinary lenses have |k1| < 0.5, |k2| < 0.5; larger
      values are terms fitted to cancel each other where the board was and diverge elsewhere).
    max_corner_distortion: the radial model moves the image corners by more than this fraction
      of their distance from the principal point, or folds back inside the image (rectilinear
      lenses stay within ~15 %, wide-angle ones in their "linear" modes too).
    max_focal_std / max_principal_std: 1-sigma uncertainty of fx, fy (fraction of the value)
      and cx, cy (fraction of the width / height), from ``cv2.calibrateCameraExtended``.
    max_k1_std / max_k2_std: 1-sigma uncertainty of k1 and k2 (k1, k2, k3 are correlated, so
      these are loose: a well spread set gives ~0.002 / 0.01).
    noise_floor_px: the uncertainties assume corner noise of at least this RMS; a fit to few
      views absorbs the noise and reports too small a residual (the issue's 3-photo fit: 0.1 px).
    """

    min_frames: int = 6
    min_coverage: float = 0.4
    max_principal_offset: float = 0.1
    max_radial: float = 1.0
    max_corner_distortion: float = 0.2
    max_focal_std: float = 0.01
    max_principal_std: float = 0.01
    max_k1_std: float = 0.05
    max_k2_std: float = 0.5
    noise_floor_px: float = 0.1

    def __post_init__(self):
        if self.min_frames < 1:
            raise CalibrationError(f"quality.min_frames must be >= 1, got {self.min_frames}")
        if not 0 <= self.min_coverage <= 1:
            raise CalibrationError(f"quality.min_coverage is a fraction of the image (0..1), got {self.min_coverage}")
        for name in ("max_principal_offset", "max_radial", "max_corner_distortion", "max_focal_std",
                     "max_principal_std", "max_k1_std", "max_k2_std"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise CalibrationError(f"quality.{name} must be positive, got {getattr(self, name)}")
        if self.noise_floor_px < 0:
            raise CalibrationError(f"quality.noise_floor_px must be >= 0, got {self.noise_floor_px}")


@dataclass(frozen=True)
class CalibrateConfig:
    """Settings of :func:`calibrate` (defaults in ``configs/calibrate.toml``).

    board: board name (``calibration/boards/<name>.toml``) or TOML path.
    frame_stride: read every n-th frame; max_frames: stop after this many frames read per
      camera (0 = all).
    min_corners: corners a detection needs to be used (and they must span two rows).
    min_frames: frames with the board a camera needs for its intrinsics.
    min_frames_intrinsics_only: the same for ``--intrinsics-only`` (a handful of photos per
      camera; fewer than ``quality.min_frames`` still calibrates, with a warning).
    checkerboard_fallback: where ``findChessboardCornersSB`` misses a checkerboard, try
      OpenCV's classic detector (then sub-pixel refinement at full resolution): "photos"
      (image folders only: it costs ~0.3 s per 640x480 frame without a board, too much for
      videos), "always" or "never".
    max_intrinsic_frames: a diverse subset of at most this many frames goes into
      ``cv2.calibrateCamera`` (bounded runtime).
    outlier_factor: frames whose intrinsic RMS error exceeds this times the median (and 1 px)
      are dropped and the camera re-calibrated once.
    corner_outlier_factor: then single corners off their frame's board pose by more than this
      times the median residual (and 0.2 px) are dropped, for intrinsics and extrinsics alike
      (0 = keep all).
    fix_k3 / fix_tangential: hold k3 or p1, p2 at zero (the default estimates the full model).
    min_shared_frames: frames in which a camera and another one both see the board, needed
      to place it in the rig.
    ba_iterations: aniposelib bundle-adjustment rounds (robust threshold shrinking 15 -> 1 px).
    world_frame: frame index in which the board lies on the floor (None: camera 0's frame).
    allow_gaps: accept image folders missing some frame numbers (that camera just has no view
      of those frames) instead of stopping with an error naming the camera and frame.
    up: world up axis for ``world_frame``: "y" (mvcap, floor y = 0) or "z" (anipose/Pose2Sim).
    seed: seeds aniposelib's point resampling (reproducible results).
    quality: thresholds of the intrinsics quality warnings (:class:`QualityConfig`).
    """

    board: str = "charuco_5x7"
    frame_stride: int = 1
    max_frames: int = 0
    min_corners: int = 8
    min_frames: int = 10
    min_frames_intrinsics_only: int = 3
    checkerboard_fallback: str = "photos"
    max_intrinsic_frames: int = 50
    outlier_factor: float = 4.0
    corner_outlier_factor: float = 3.0
    fix_k3: bool = False
    fix_tangential: bool = False
    min_shared_frames: int = 3
    ba_iterations: int = 6
    world_frame: int | None = None
    up: str = "y"
    seed: int = 0
    allow_gaps: bool = False
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self):
        if self.frame_stride < 1:
            raise CalibrationError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.max_frames < 0:
            raise CalibrationError(f"max_frames must be >= 0 (0 = all), got {self.max_frames}")
        if self.min_corners < 4:
            raise CalibrationError(f"min_corners must be >= 4 (a pose needs 4 points), got {self.min_corners}")
        if self.min_frames < 3:
            raise CalibrationError(f"min_frames must be >= 3, got {self.min_frames}")
        if self.min_frames_intrinsics_only < 3:
            raise CalibrationError(
                f"min_frames_intrinsics_only must be >= 3 (two views of a flat board leave the distortion free), "
                f"got {self.min_frames_intrinsics_only}"
            )
        if self.max_intrinsic_frames < self.min_frames:
            raise CalibrationError(
                f"max_intrinsic_frames ({self.max_intrinsic_frames}) must be >= min_frames ({self.min_frames})"
            )
        if self.min_shared_frames < 1:
            raise CalibrationError(f"min_shared_frames must be >= 1, got {self.min_shared_frames}")
        if self.checkerboard_fallback not in ("photos", "always", "never"):
            raise CalibrationError(
                f"checkerboard_fallback must be 'photos' (image folders), 'always' or 'never', "
                f"got {self.checkerboard_fallback!r}"
            )
        if self.up not in ("y", "z"):
            raise CalibrationError(f"up must be 'y' (mvcap, Y-up) or 'z' (anipose/Pose2Sim), got {self.up!r}")
        if self.world_frame is not None and self.world_frame < 0:
            raise CalibrationError(f"world_frame must be a frame index >= 0, got {self.world_frame}")


def load_calibrate_config(path=None, overrides=None) -> CalibrateConfig:
    """:class:`CalibrateConfig` from a TOML file (default ``configs/calibrate.toml``) plus
    ``key=value`` overrides."""
    from .config import load_config

    return load_config(CalibrateConfig, path or "calibrate.toml", overrides)


# ==========================================================================================
# sources and frames
# ==========================================================================================
def resolve_sources(sources: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, Path]:
    """Camera name -> video file or image folder (:func:`mvcap.sources.resolve_sources`:
    a mapping, ``NAME=PATH`` items, paths named after their cameras or one folder of them)."""
    return sources_mod.resolve_sources(sources, error=CalibrationError)


def iter_frames(
    source: str | Path | SourceInfo, stride: int = 1, max_frames: int = 0, extra: Sequence[int] = ()
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, grey image (H, W) uint8) for every ``stride``-th frame of a video
    or image folder (at most ``max_frames``, 0 = all), plus the frame indices in ``extra``
    wherever they fall. An image folder's frame index is the number in the file name (counted
    from the first); frames it has no file for are skipped (see ``allow_gaps``)."""
    info = source if isinstance(source, SourceInfo) else _probe({"source": Path(source)})["source"]
    grid = itertools.count(0, stride) if max_frames <= 0 else iter(range(0, stride * max_frames, stride))
    wanted = (k for k, _ in itertools.groupby(heapq.merge(grid, sorted(set(int(e) for e in extra)))))
    with FrameReader(info, CalibrationError, until_end=True) as reader:
        for i in wanted:
            if info.kind == "images":
                if i >= info.num_frames:
                    break
                if info.file_for(i) is None:
                    continue
            img = reader.read(i)
            if img is None:  # the video ended
                break
            yield i, cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def _probe(paths: Mapping[str, Path]) -> dict[str, SourceInfo]:
    return probe_sources(paths, error=CalibrationError)


# ==========================================================================================
# detection
# ==========================================================================================
@dataclass(frozen=True)
class BoardDetections:
    """Board corners found in one camera's frames.

    frames: (F,) frame indices read; uv_pixels: (F, M, 2) float64 distorted pixel positions of
    the board's M corners, NaN where not found; preview: (H, W) uint8 grey frame with the
    most corners (for the report picture), preview_frame its index; methods: (F,) the
    detector that found the board per frame ("charuco", "sb", "classic"; "" where none did).
    """

    camera: str
    source: Path
    image_size: tuple[int, int]
    frames: np.ndarray
    uv_pixels: np.ndarray
    preview: np.ndarray
    preview_frame: int
    methods: tuple[str, ...] = ()

    @property
    def counts(self) -> np.ndarray:
        """(F,) corners found per frame."""
        return np.isfinite(self.uv_pixels[..., 0]).sum(1)

    def found_by(self) -> dict[str, int]:
        """Frames with the board per detector, e.g. ``{"sb": 5, "classic": 2}``."""
        out: dict[str, int] = {}
        for m in self.methods:
            if m:
                out[m] = out.get(m, 0) + 1
        return out


def detect_source(
    board: Board,
    camera: str,
    source: str | Path | SourceInfo,
    stride: int = 1,
    max_frames: int = 0,
    extra_frames: Sequence[int] = (),
    progress: bool = True,
    fallback: bool = True,
) -> BoardDetections:
    """Detect the board in every read frame of one camera's video or image folder
    (``fallback``: checkerboards, see :meth:`Board.detector`)."""
    detect = board.detector(fallback)
    M = board.num_corners
    frames, uvs, methods = [], [], []
    size = None
    best = (-1, None, -1)
    for idx, gray in tqdm(
        iter_frames(source, stride, max_frames, extra_frames),
        desc=f"detect {camera}",
        disable=not progress,
        unit="frame",
        leave=False,
    ):
        h, w = gray.shape[:2]
        if size is None:
            size = (w, h)
        elif size != (w, h):
            raise CalibrationError(
                f"camera '{camera}': frame {idx} of {source} is {w}x{h} but earlier frames are "
                f"{size[0]}x{size[1]}; all frames of one camera must have the same size"
            )
        ids, uv, method = detect(gray)
        methods.append(method)
        row = np.full((M, 2), np.nan)
        keep = (ids >= 0) & (ids < M)
        row[ids[keep]] = uv[keep]
        frames.append(idx)
        uvs.append(row)
        n = int(keep.sum())
        if n > best[0]:
            best = (n, gray, idx)
    if size is None:
        raise CalibrationError(f"camera '{camera}': no frames could be read from {source}")
    return BoardDetections(
        camera=camera,
        source=source.path if isinstance(source, SourceInfo) else Path(source),
        image_size=size,
        frames=np.asarray(frames, np.int64),
        uv_pixels=np.stack(uvs),
        preview=best[1],
        preview_frame=int(best[2]),
        methods=tuple(methods),
    )


def _fallback(cfg: CalibrateConfig, info: SourceInfo) -> bool:
    """Whether the classic checkerboard detector backs up SB for this source."""
    return cfg.checkerboard_fallback == "always" or (cfg.checkerboard_fallback == "photos" and info.kind == "images")


def _usable(board: Board, uv: np.ndarray, min_corners: int) -> bool:
    """Enough corners, and not all on one line (a homography needs two rows)."""
    ok = np.isfinite(uv[:, 0])
    if ok.sum() < min_corners:
        return False
    xy = board.corners_board[ok, :2]
    s = np.linalg.svd(xy - xy.mean(0), compute_uv=False)
    return bool(s[-1] / math.sqrt(len(xy)) > 0.3 * board.square_length)


# ==========================================================================================
# intrinsics
# ==========================================================================================
@dataclass(frozen=True)
class CameraIntrinsics:
    """One camera's intrinsics and its per-frame board poses.

    K (3, 3), dist (5,) k1, k2, p1, p2, k3; usable: (F,) bool frames with a usable detection
    (indexing ``BoardDetections.frames``); used: (F,) bool frames that went into the final
    ``calibrateCamera``; uv_pixels: (F, M, 2) the detections with outlier corners set to NaN
    (what the extrinsics use); rvec_board2cam / t_board2cam: (F, 3) board pose per usable frame
    (NaN elsewhere), metres; pnp_error_px: (F,) RMS reprojection error of that pose;
    errors_px: per-corner reprojection errors of the used frames; std: (9,) 1-sigma
    uncertainty of (fx, fy, cx, cy, k1, k2, p1, p2, k3) from ``cv2.calibrateCameraExtended``
    (0 for a parameter held fixed; NaN when the whole camera was given, ``fixed``).
    """

    camera: str
    image_size: tuple[int, int]
    K: np.ndarray
    dist: np.ndarray
    usable: np.ndarray
    used: np.ndarray
    uv_pixels: np.ndarray
    rvec_board2cam: np.ndarray
    t_board2cam: np.ndarray
    pnp_error_px: np.ndarray
    errors_px: np.ndarray
    rms_px: float
    std: np.ndarray = field(default_factory=lambda: np.full(9, np.nan))
    fixed: bool = False


def _pose_descriptors(board, det, idx, K0) -> np.ndarray:
    """Per frame: board tilt (normal x, y in the camera), image position, log distance."""
    W, H = det.image_size
    out = []
    for f in idx:
        ok = np.isfinite(det.uv_pixels[f, :, 0])
        _, rvec, tvec = cv2.solvePnP(board.corners_board[ok], det.uv_pixels[f, ok], K0, None, flags=cv2.SOLVEPNP_IPPE)
        R, _ = cv2.Rodrigues(rvec)
        c = det.uv_pixels[f, ok].mean(0)
        out.append([R[0, 2], R[1, 2], c[0] / W, c[1] / H, 0.5 * math.log(max(float(tvec[2, 0]), 1e-3))])
    return np.asarray(out)


def _diverse_subset(desc: np.ndarray, n: int, first: int) -> np.ndarray:
    """Farthest-point sampling: n indices into desc, starting from ``first``."""
    chosen = [first]
    d = np.linalg.norm(desc - desc[first], axis=1)
    while len(chosen) < min(n, len(desc)):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(desc - desc[nxt], axis=1))
    return np.asarray(sorted(chosen))


def _solve_pnp(objp, imgp, K, dist):
    """Board pose from one view (planar IPPE, both solutions tried, LM refined) and its RMS error."""
    n, rvecs, tvecs, _ = cv2.solvePnPGeneric(objp, imgp, K, dist, flags=cv2.SOLVEPNP_IPPE)
    best = None
    for r, t in zip(rvecs[:n], tvecs[:n]):
        r, t = cv2.solvePnPRefineLM(objp, imgp, K, dist, r.copy(), t.copy())
        proj, _ = cv2.projectPoints(objp, r, t, K, dist)
        rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - imgp) ** 2, 1))))
        if best is None or rms < best[2]:
            best = (r.reshape(3), t.reshape(3), rms)
    return best


def calibrate_intrinsics(
    board: Board,
    det: BoardDetections,
    cfg: CalibrateConfig = CalibrateConfig(),
    fixed: tuple[np.ndarray, np.ndarray] | None = None,
    min_frames: int | None = None,
) -> CameraIntrinsics:
    """Full-model intrinsics of one camera by ``cv2.calibrateCameraExtended`` on its detections.

    A diverse subset of the usable frames (at most ``cfg.max_intrinsic_frames``) is
    calibrated; frames with a poor fit and then single corners inconsistent with their
    frame's board pose (residual over ``cfg.corner_outlier_factor`` times the median, and
    0.2 px) are dropped, and the camera is calibrated again. Raises
    :class:`CalibrationError` naming the camera when it has fewer than ``min_frames``
    (default ``cfg.min_frames``) usable frames.

    fixed: (K (3, 3), dist (5,)) given intrinsics: only the board poses are fitted (any
    number of usable frames will do; placing the camera in the rig has its own check).
    """
    F, M = det.uv_pixels.shape[:2]
    uv = det.uv_pixels.copy()
    obj = board.corners_board
    usable = np.array([_usable(board, uv[f], cfg.min_corners) for f in range(F)], bool)
    idx = np.flatnonzero(usable)
    min_frames = cfg.min_frames if min_frames is None else int(min_frames)
    if fixed is None and len(idx) < min_frames:
        n_any = int((det.counts > 0).sum())
        raise CalibrationError(
            f"camera '{det.camera}' ({det.source}): the board was usable (>= {cfg.min_corners} corners over two "
            f"or more rows) in only {len(idx)} of {F} frames read (corners seen at all in {n_any}); its "
            f"intrinsics need at least {min_frames} such frames. Film the board in more positions in this "
            "view, read more frames (lower the frame stride, raise max_frames), or lower min_frames"
        )

    def points(f):
        ok = np.isfinite(uv[f, :, 0])
        return obj[ok], uv[f, ok]

    size = tuple(det.image_size)
    sel = idx
    if fixed is None and len(idx) > cfg.max_intrinsic_frames:
        K0 = cv2.initCameraMatrix2D(
            [points(f)[0].astype(np.float32) for f in idx], [points(f)[1].astype(np.float32) for f in idx], size
        )
        desc = _pose_descriptors(board, det, idx, K0)
        desc = (desc - desc.mean(0)) / (desc.std(0) + 1e-9)
        first = int(np.argmax(det.counts[idx]))
        sel = idx[_diverse_subset(desc, cfg.max_intrinsic_frames, first)]
    flags = (cv2.CALIB_FIX_K3 if cfg.fix_k3 else 0) | (cv2.CALIB_ZERO_TANGENT_DIST if cfg.fix_tangential else 0)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)

    def run(frames):
        objp = [points(f)[0].astype(np.float32) for f in frames]
        imgp = [points(f)[1].astype(np.float32) for f in frames]
        if fixed is not None:
            K, dist = fixed
            std = np.full(9, np.nan)
            fits = [_solve_pnp(o.astype(np.float64), i.astype(np.float64), K, dist) for o, i in zip(objp, imgp)]
            rv, tv = [f[0] for f in fits], [f[1] for f in fits]
        else:
            try:
                _, K, dist, rv, tv, std, _, _ = cv2.calibrateCameraExtended(
                    objp, imgp, size, None, None, flags=flags, criteria=crit
                )
            except cv2.error as exc:
                raise CalibrationError(
                    f"camera '{det.camera}': OpenCV could not calibrate from {len(frames)} frames ({exc.err}); "
                    "film the board at more varied angles and positions"
                ) from None
            std = std.reshape(-1)[:9].astype(np.float64)
        errs = []
        for o, i, r, t in zip(objp, imgp, rv, tv):
            proj, _ = cv2.projectPoints(o, np.asarray(r, np.float64), np.asarray(t, np.float64), K, dist)
            errs.append(np.linalg.norm(proj.reshape(-1, 2) - i, axis=1))
        return K, np.pad(np.asarray(dist).reshape(-1)[:5], (0, max(0, 5 - np.asarray(dist).size))), errs, std

    K, dist, errs, std = run(sel)
    frame_rms = np.array([np.sqrt(np.mean(e**2)) for e in errs])
    if fixed is None and len(sel):
        bad = frame_rms > max(cfg.outlier_factor * float(np.median(frame_rms)), 1.0)
        if bad.any() and (~bad).sum() >= min_frames:
            sel = sel[~bad]
            K, dist, errs, std = run(sel)

    def poses():
        r_, t_, e_ = np.full((F, 3), np.nan), np.full((F, 3), np.nan), np.full(F, np.nan)
        res = np.full((F, M), np.nan)
        for f in idx:
            o, i = points(f)
            r_[f], t_[f], e_[f] = _solve_pnp(o, i, K, dist)
            proj, _ = cv2.projectPoints(o, r_[f], t_[f], K, dist)
            res[f, np.isfinite(uv[f, :, 0])] = np.linalg.norm(proj.reshape(-1, 2) - i, axis=1)
        return r_, t_, e_, res

    rvecs, tvecs, pnp_err, res = poses()
    if cfg.corner_outlier_factor > 0 and len(idx):
        thresh = max(cfg.corner_outlier_factor * float(np.nanmedian(res[idx])), 0.2)
        outlier = res > thresh
        if outlier.any():
            uv[outlier] = np.nan
            still = np.array([_usable(board, uv[f], cfg.min_corners) for f in range(F)], bool)
            keep = sel[still[sel]]
            if fixed is not None or len(keep) >= min_frames:
                usable, idx, sel = usable & still, np.flatnonzero(usable & still), keep
                K, dist, errs, std = run(sel)
                rvecs, tvecs, pnp_err, res = poses()
            else:
                uv = det.uv_pixels.copy()
    used = np.zeros(F, bool)
    used[sel] = True
    errors = np.concatenate(errs) if errs else np.zeros(0)
    return CameraIntrinsics(
        camera=det.camera,
        image_size=size,
        K=np.asarray(K, np.float64),
        dist=np.asarray(dist, np.float64),
        usable=usable,
        used=used,
        uv_pixels=uv,
        rvec_board2cam=rvecs,
        t_board2cam=tvecs,
        pnp_error_px=pnp_err,
        errors_px=errors,
        rms_px=float(np.sqrt(np.mean(errors**2))) if errors.size else float("nan"),
        std=std,
        fixed=fixed is not None,
    )


# ==========================================================================================
# intrinsics quality
# ==========================================================================================
# border cells of a 3 x 3 grid over the image: (name, column, row)
_REGIONS = (
    ("top-left", 0, 0), ("top", 1, 0), ("top-right", 2, 0), ("left", 0, 1),
    ("right", 2, 1), ("bottom-left", 0, 2), ("bottom", 1, 2), ("bottom-right", 2, 2),
)  # fmt: skip


@dataclass(frozen=True)
class IntrinsicsQuality:
    """How well one camera's fitted intrinsics are constrained (:func:`check_intrinsics`).

    frames: views of the board used in the fit; coverage: fraction of the image inside the
    board's outline (its outer corners) in at least one used view; missing_regions: border
    cells of a 3x3 grid over the image without any used corner; principal_offset: (|cx - centre|
    / W, |cy - centre| / H); corner_distortion: radial displacement the lens model gives the
    image corners, as a fraction of their distance from the principal point; folds: the
    radial model turns back inside the image; focal_std (fraction of fx/fy, the larger),
    principal_std (fraction of W/H, the larger), k1_std, k2_std: 1-sigma uncertainties with
    the noise floor applied (NaN for given intrinsics); warnings: one line each, naming the
    camera, what is wrong and what to film.
    """

    camera: str
    frames: int
    coverage: float
    missing_regions: tuple[str, ...]
    principal_offset: tuple[float, float]
    corner_distortion: float
    folds: bool
    focal_std: float
    principal_std: float
    k1_std: float
    k2_std: float
    warnings: tuple[str, ...]


def _coverage(uv_frames: Sequence[np.ndarray], image_size: tuple[int, int]) -> tuple[float, tuple[str, ...]]:
    """Fraction of the image inside the union of the boards' outlines, and the border cells of a
    3x3 grid with no corner. uv_frames: per view (n, 2) detected corners (pixels, finite)."""
    W, H = image_size
    s = 256.0 / max(W, H)  # a coarse mask is plenty for a percentage
    mask = np.zeros((max(1, round(H * s)), max(1, round(W * s))), np.uint8)
    cells = np.zeros((3, 3), bool)
    for uv in uv_frames:
        if len(uv) >= 3:
            hull = cv2.convexHull((uv * s).astype(np.float32))
            cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
        col = np.clip((3 * (uv[:, 0] + 0.5) / W).astype(int), 0, 2)
        row = np.clip((3 * (uv[:, 1] + 0.5) / H).astype(int), 0, 2)
        cells[row, col] = True
    missing = tuple(name for name, c, r in _REGIONS if not cells[r, c])
    return float(mask.mean()), missing


def _radial_check(K: np.ndarray, dist: np.ndarray, image_size: tuple[int, int]) -> tuple[float, bool]:
    """Radial displacement (fraction of the radius) at the farthest image corner and whether the
    radial model r (1 + k1 r^2 + k2 r^4 + k3 r^6) stops increasing before it. The corner's
    radius is its pinhole one (normalised coordinates through K alone)."""
    W, H = image_size
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u, v = np.array([-0.5, W - 0.5]), np.array([-0.5, H - 0.5])
    r_max = float(np.max(np.hypot((u[:, None] - cx) / fx, (v[None, :] - cy) / fy)))
    k1, k2, k3 = float(dist[0]), float(dist[1]), float(dist[4]) if len(dist) > 4 else 0.0
    r2 = np.linspace(0.0, r_max, 256) ** 2
    slope = 1 + 3 * k1 * r2 + 5 * k2 * r2**2 + 7 * k3 * r2**3  # d/dr of r (1 + k1 r^2 + ...)
    R2 = r_max**2
    return abs(k1 * R2 + k2 * R2**2 + k3 * R2**3), bool((slope <= 0).any())


def check_intrinsics(board: Board, intr: CameraIntrinsics, q: QualityConfig = QualityConfig()) -> IntrinsicsQuality:
    """Warnings (never errors) when a camera's fitted intrinsics are poorly constrained: too few
    views, the board never near the image's edges and corners, the principal point or the
    distortion far from any real lens, or a large uncertainty (thresholds: :class:`QualityConfig`).
    Each warning names the camera and says what to film. Given intrinsics (``intr.fixed``) get
    the coverage numbers but no warnings."""
    name = intr.camera
    W, H = intr.image_size
    used = np.flatnonzero(intr.used)
    uv_frames = []
    for f in used:
        uv = intr.uv_pixels[f]
        uv_frames.append(uv[np.isfinite(uv[:, 0])])
    coverage, missing = _coverage(uv_frames, intr.image_size)
    K, dist = intr.K, intr.dist
    off = (abs(K[0, 2] - (W - 1) / 2) / W, abs(K[1, 2] - (H - 1) / 2) / H)
    corner_dist, folds = _radial_check(K, dist, intr.image_size)
    # a fit to few views absorbs the corner noise: assume at least noise_floor_px of it
    scale = max(1.0, q.noise_floor_px / intr.rms_px) if intr.rms_px > 0 else 1.0
    sd = np.asarray(intr.std, np.float64) * scale
    focal_std = float(max(sd[0] / K[0, 0], sd[1] / K[1, 1]))
    principal_std = float(max(sd[2] / W, sd[3] / H))
    k1_std, k2_std = float(sd[4]), float(sd[5])
    warns: list[str] = []
    if not intr.fixed:
        cam = f"camera '{name}'"
        n = len(used)
        if n < q.min_frames:
            warns.append(
                f"{cam}: its intrinsics rest on only {n} view(s) of the board (fewer than {q.min_frames}); "
                f"film {q.min_frames - n} or more others (10-20 is better): the board close to the camera, "
                "all over the image, tilted 20-45 degrees in different directions"
            )
        if coverage < q.min_coverage or missing:
            where = f"; no board corner in its {', '.join(missing)} part(s)" if missing else ""
            warns.append(
                f"{cam}: the board covered {100 * coverage:.0f}% of the image (want >= {100 * q.min_coverage:.0f}%)"
                f"{where}; the lens distortion is only measured where the board was: film the board close to the "
                "camera and near the image edges and corners"
            )
        if max(off) > q.max_principal_offset:
            warns.append(
                f"{cam}: principal point ({K[0, 2]:.0f}, {K[1, 2]:.0f}) is {100 * off[0]:.0f}% / "
                f"{100 * off[1]:.0f}% of the width / height off the image centre (over "
                f"{100 * q.max_principal_offset:.0f}%), unlike real sensors: add photos with the board tilted "
                "20-45 degrees left, right, up and down"
            )
        big = abs(dist[0]) > q.max_radial or abs(dist[1]) > q.max_radial
        if big or folds or corner_dist > q.max_corner_distortion:
            shape = "folds back inside the image" if folds else f"moves the image corners by {100 * corner_dist:.0f}%"
            warns.append(
                f"{cam}: unusual lens distortion (k1 = {dist[0]:+.3f}, k2 = {dist[1]:+.3f}, k3 = {dist[4]:+.3f}; "
                f"the model {shape}), typical of a fit to too few or too central views: film the board near "
                "the image edges and corners, close to the camera"
            )
        uncertain = []
        if focal_std > q.max_focal_std:
            uncertain.append(f"focal length +-{100 * focal_std:.1f}%")
        if principal_std > q.max_principal_std:
            uncertain.append(f"principal point +-{100 * principal_std:.1f}% of the image")
        if k1_std > q.max_k1_std:
            uncertain.append(f"k1 +-{k1_std:.3f}")
        if k2_std > q.max_k2_std:
            uncertain.append(f"k2 +-{k2_std:.2f}")
        if uncertain:
            warns.append(
                f"{cam}: uncertain intrinsics ({', '.join(uncertain)}, 1 sigma): add photos with the board tilted "
                "in different directions and at different distances"
            )
    return IntrinsicsQuality(
        camera=name,
        frames=int(len(used)),
        coverage=coverage,
        missing_regions=missing,
        principal_offset=(float(off[0]), float(off[1])),
        corner_distortion=float(corner_dist),
        folds=folds,
        focal_std=focal_std,
        principal_std=principal_std,
        k1_std=k1_std,
        k2_std=k2_std,
        warnings=tuple(warns),
    )


# ==========================================================================================
# extrinsics
# ==========================================================================================
def _Rt_to_M(R, t) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, t
    return M


def _rvec_to_M(rvec, tvec) -> np.ndarray:
    return _Rt_to_M(cv2.Rodrigues(np.asarray(rvec, np.float64))[0], tvec)


def _robust_mean_transform(Ms: np.ndarray) -> np.ndarray:
    """Robust mean of rigid transforms (n, 4, 4): the medoid by rotation angle, then the
    chordal mean of rotations and the median translation of those near it."""
    R = Ms[:, :3, :3]
    # pairwise rotation angles via the trace of R_i^T R_j
    tr = np.einsum("aji,bji->ab", R, R)
    ang = np.arccos(np.clip((tr - 1) / 2, -1, 1))
    medoid = int(np.argmin(np.median(ang, 1)))
    near = ang[medoid] <= max(3 * float(np.median(ang[medoid])), np.deg2rad(2.0))
    t = Ms[near, :3, 3]
    t_med = np.median(t, 0)
    dist = np.linalg.norm(t - t_med, axis=1)
    keep = dist <= max(3 * float(np.median(dist)), 0.01)
    Rs = R[near][keep]
    U, _, Vt = np.linalg.svd(Rs.sum(0))
    Rm = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
    return _Rt_to_M(Rm, np.median(t[keep], 0))


def _frame_alignment(dets: Sequence[BoardDetections]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Union of the frame indices read by all cameras, and per camera a map from that union
    to its own row (-1 where it did not read the frame)."""
    all_frames = np.unique(np.concatenate([d.frames for d in dets]))
    rows = []
    for d in dets:
        r = np.full(len(all_frames), -1, np.int64)
        r[np.searchsorted(all_frames, d.frames)] = np.arange(len(d.frames))
        rows.append(r)
    return all_frames, rows


def _board_in_cams(dets, intr):
    """Per (camera, frame of the union) board->camera transforms (C, T, 4, 4), NaN where the
    camera has no usable pose, and the union of frame indices (T,)."""
    all_frames, rows = _frame_alignment(dets)
    C, T = len(dets), len(all_frames)
    M = np.full((C, T, 4, 4), np.nan)
    for c in range(C):
        good_err = intr[c].pnp_error_px
        thresh = max(5.0 * float(np.nanmedian(good_err)), 2.0) if np.isfinite(good_err).any() else 0
        for k in range(T):
            f = rows[c][k]
            if f >= 0 and intr[c].usable[f] and good_err[f] <= thresh:
                M[c, k] = _rvec_to_M(intr[c].rvec_board2cam[f], intr[c].t_board2cam[f])
    return M, all_frames, rows


def _initial_extrinsics(names, M_bc, min_shared) -> np.ndarray:
    """Camera poses (C, 4, 4) world->camera with world = camera 0, along a maximum spanning
    tree of shared board sightings."""
    C = len(names)
    seen = np.isfinite(M_bc[:, :, 0, 0])
    shared = (seen[:, None, :] & seen[None, :, :]).sum(-1)
    pose = {0: np.eye(4)}
    while len(pose) < C:
        inside = sorted(pose)
        outside = [c for c in range(C) if c not in pose]
        sub = shared[np.ix_(inside, outside)]
        a_i, b_i = np.unravel_index(int(np.argmax(sub)), sub.shape)
        if sub[a_i, b_i] < min_shared:
            # name the camera that is worst off among those not yet placed
            counts = shared[np.ix_(outside, inside)].max(1)
            worst = outside[int(np.argmin(counts))]
            n = int(shared[worst, [i for i in range(C) if i != worst]].max()) if C > 1 else 0
            raise CalibrationError(
                f"camera '{names[worst]}' sees the board at the same time as another camera in only {n} usable "
                f"frame(s); placing it in the rig needs at least {min_shared}. Film the board where this camera "
                f"and at least one other see it together (cameras placed so far: {[names[i] for i in inside]})"
            )
        a, b = inside[a_i], outside[b_i]
        both = seen[a] & seen[b]
        # T_b<-a = T_b<-board T_board<-a, per shared frame
        rel = np.stack([M_bc[b, k] @ np.linalg.inv(M_bc[a, k]) for k in np.flatnonzero(both)])
        pose[b] = _robust_mean_transform(rel) @ pose[a]
    return np.stack([pose[c] for c in range(C)])


def _triangulate_dlt(points_norm: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Linear triangulation. points_norm: (C, N, 2) undistorted normalised coordinates (NaN
    where unseen); P: (C, 3, 4) world->camera [R|t]. Returns (N, 3), NaN where < 2 views."""
    C, N, _ = points_norm.shape
    ok = np.isfinite(points_norm[..., 0])  # (C, N)
    xy = np.nan_to_num(points_norm)
    rows_x = xy[..., 0, None] * P[:, None, 2] - P[:, None, 0]  # (C, N, 4)
    rows_y = xy[..., 1, None] * P[:, None, 2] - P[:, None, 1]
    A = np.concatenate([rows_x, rows_y], 0) * np.concatenate([ok, ok], 0)[..., None]
    A = A.transpose(1, 0, 2)  # (N, 2C, 4)
    X = np.linalg.svd(A)[2][:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = X[:, :3] / X[:, 3:]
    out[ok.sum(0) < 2] = np.nan
    return out


def _ani_group():
    """aniposelib's CameraGroup with two pieces swapped for plain numpy / Python: the error
    function runs without numba's object mode (it compiles for seconds and gains nothing),
    and triangulation is a numpy DLT instead of jax (whose import switches the whole process
    to 64-bit mode and whose jit compiles per point count)."""
    from aniposelib.cameras import CameraGroup

    class Group(CameraGroup):
        _error_fun_bundle = CameraGroup.__dict__["_error_fun_bundle"].py_func

        def triangulate(self, points, undistort=True, progress=False, fast=False, disable_64bit=False):
            one = points.ndim == 2
            pts = points.reshape(len(self.cameras), -1, 2).astype(np.float64)
            if undistort:
                pts = np.stack([cam.undistort_points(np.ascontiguousarray(p)) for cam, p in zip(self.cameras, pts)])
            P = np.stack([cam.get_extrinsics_mat()[:3] for cam in self.cameras])
            out = _triangulate_dlt(pts, P)
            return out[0] if one else out

    return Group


def _rig_from_poses(names, intr, poses) -> Rig:
    return Rig(
        tuple(Camera(n, ci.K, ci.dist, P[:3, :3], P[:3, 3], ci.image_size) for n, ci, P in zip(names, intr, poses))
    )


def calibrate_extrinsics(
    board: Board,
    dets: Sequence[BoardDetections],
    intr: Sequence[CameraIntrinsics],
    cfg: CalibrateConfig = CalibrateConfig(),
) -> Rig:
    """Relative camera poses (world = camera 0) from simultaneous board sightings, refined by
    aniposelib's iterative bundle adjustment with every camera's intrinsics held."""
    from aniposelib.cameras import Camera as AniCamera

    names = [d.camera for d in dets]
    M_bc, all_frames, _ = _board_in_cams(dets, intr)
    poses = _initial_extrinsics(names, M_bc, cfg.min_shared_frames)
    if len(names) == 1:
        return _rig_from_poses(names, intr, poses)
    _, rows = _frame_alignment(dets)

    # corners seen in >= 2 cameras at usable frames; one board instance per frame
    C, Mn = len(dets), board.num_corners
    seen = np.isfinite(M_bc[:, :, 0, 0])
    multi = np.flatnonzero(seen.sum(0) >= 2)
    pts, objp, ids, board_world = [], [], [], []
    for k in multi:
        uv = np.full((C, Mn, 2), np.nan)
        for c in np.flatnonzero(seen[:, k]):
            uv[c] = intr[c].uv_pixels[rows[c][k]]
        ok = np.isfinite(uv[..., 0]).sum(0) >= 2
        if ok.sum() < 4:
            continue
        pts.append(uv[:, ok])
        objp.append(board.corners_board[ok])
        ids.append(np.full(int(ok.sum()), len(board_world)))
        # board pose in the world from the camera that sees most of it (deterministic init)
        best = max(np.flatnonzero(seen[:, k]), key=lambda c: np.isfinite(uv[c, :, 0]).sum())
        board_world.append(np.linalg.inv(poses[best]) @ M_bc[best, k])
    if not pts:
        raise CalibrationError(
            "no frame shows the board's corners to two cameras at once; film the board where neighbouring cameras "
            "see it together"
        )
    p2ds = np.concatenate(pts, 1)
    objp = np.concatenate(objp)
    ids = np.concatenate(ids)
    # aniposelib wants the board pose per camera and point; give every camera the same
    # world pose seen through its initial extrinsics so its random pick does not matter
    rvecs = np.zeros((C, len(ids), 3))
    tvecs = np.zeros((C, len(ids), 3))
    for b, Mw in enumerate(board_world):
        sel = ids == b
        for c in range(C):
            Mc = poses[c] @ Mw
            rvecs[c, sel] = cv2.Rodrigues(Mc[:3, :3])[0].reshape(3)
            tvecs[c, sel] = Mc[:3, 3]
    extra = {"objp": objp, "ids": ids, "rvecs": rvecs, "tvecs": tvecs}
    group = _ani_group()(
        [
            AniCamera(
                matrix=ci.K,
                dist=ci.dist,
                size=tuple(ci.image_size),
                rvec=cv2.Rodrigues(P[:3, :3])[0].reshape(3),
                tvec=P[:3, 3],
                name=n,
            )
            for n, ci, P in zip(names, intr, poses)
        ]
    )
    state = np.random.get_state()
    np.random.seed(cfg.seed)  # aniposelib resamples points with numpy's global generator
    try:
        group.bundle_adjust_iter(p2ds, extra, n_iters=cfg.ba_iterations, only_extrinsics=True, verbose=False)
    finally:
        np.random.set_state(state)
    ba = np.stack([_rvec_to_M(cam.get_rotation(), cam.get_translation()) for cam in group.cameras])
    # bundle adjustment leaves the gauge free: put the world back on camera 0
    ba = ba @ np.linalg.inv(ba[0])
    return _rig_from_poses(names, intr, ba)


def _refine_board_pose(board, rig: Rig, uv_by_cam: dict[int, np.ndarray], M0: np.ndarray) -> np.ndarray:
    """Board->world transform fitted to its corners in every camera that sees it."""
    from scipy.optimize import least_squares

    obj = board.corners_board

    def resid(x):
        R = cv2.Rodrigues(x[:3])[0]
        out = []
        for c, uv in uv_by_cam.items():
            cam = rig[c]
            ok = np.isfinite(uv[:, 0])
            Rc = cam.R_world2cam @ R
            tc = cam.R_world2cam @ x[3:] + cam.t_world2cam
            proj, _ = cv2.projectPoints(obj[ok], cv2.Rodrigues(Rc)[0], tc, cam.K, cam.dist)
            out.append((proj.reshape(-1, 2) - uv[ok]).ravel())
        return np.concatenate(out)

    x0 = np.concatenate([cv2.Rodrigues(M0[:3, :3])[0].reshape(3), M0[:3, 3]])
    x = least_squares(resid, x0, method="lm").x
    return _rvec_to_M(x[:3], x[3:])


def board_poses_world(
    board: Board, dets: Sequence[BoardDetections], intr: Sequence[CameraIntrinsics], rig: Rig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Board pose per frame in the rig's world, fitted to every camera with a usable view.

    Returns (frames (T,), board2world (T, 4, 4) NaN where no camera saw it, n_views (T,))."""
    M_bc, all_frames, rows = _board_in_cams(dets, intr)
    T = len(all_frames)
    out = np.full((T, 4, 4), np.nan)
    seen = np.isfinite(M_bc[:, :, 0, 0])
    poses = [_Rt_to_M(c.R_world2cam, c.t_world2cam) for c in rig]
    for k in range(T):
        cams = np.flatnonzero(seen[:, k])
        if len(cams) == 0:
            continue
        uv = {int(c): intr[c].uv_pixels[rows[c][k]] for c in cams}
        best = max(cams, key=lambda c: np.isfinite(uv[int(c)][:, 0]).sum())
        M0 = np.linalg.inv(poses[best]) @ M_bc[best, k]
        out[k] = _refine_board_pose(board, rig, uv, M0) if len(cams) > 1 else M0
    return all_frames, out, seen.sum(0)


def world_from_floor_board(board2world: np.ndarray, up: str = "y") -> np.ndarray:
    """(4, 4) transform from the rig's current world to the world of a board lying on the
    floor: origin at the board origin, X along the board's x axis, the up axis ("y": +Y,
    mvcap; "z": +Z, anipose/Pose2Sim) along the normal out of the printed face (-z_board).

    board2world: (4, 4) the board's pose in the current world."""
    if up == "y":
        P = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # X = x_b, Y = -z_b, Z = y_b
    elif up == "z":
        P = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])  # X = x_b, Y = -y_b, Z = -z_b
    else:
        raise CalibrationError(f"up must be 'y' or 'z', got {up!r}")
    A = np.eye(4)
    A[:3, :3] = P
    return A @ np.linalg.inv(board2world)


def align_to_board(rig: Rig, board2world: np.ndarray, up: str = "y") -> Rig:
    """Re-express a rig in the world of a board lying on the floor
    (see :func:`world_from_floor_board`)."""
    Ainv = np.linalg.inv(world_from_floor_board(board2world, up))
    cams = []
    for c in rig:
        M = _Rt_to_M(c.R_world2cam, c.t_world2cam) @ Ainv
        cams.append(Camera(c.name, c.K, c.dist, M[:3, :3], M[:3, 3], c.image_size))
    return Rig(tuple(cams))


# ==========================================================================================
# report
# ==========================================================================================
@dataclass(frozen=True)
class CameraReport:
    """Per-camera summary. Errors in pixels: (median, 95th percentile); ``intrinsic`` from
    the camera's own fit, ``rig`` from the calibrated rig (board poses fitted to all
    cameras that saw it at the same time; NaN if the camera never shared a frame);
    corners_dropped: detected corners left out as inconsistent with their board pose;
    found_by: frames with the board per detector ("charuco", "sb", "classic"); intrinsics:
    "fitted", or the file the camera's K and distortion were taken from; coverage: fraction of
    the image inside the board's outline in a used view; warnings: the quality check's
    (:func:`check_intrinsics`)."""

    camera: str
    source: str
    image_size: tuple[int, int]
    frames_read: int
    frames_detected: int
    frames_intrinsics: int
    frames_extrinsics: int
    K: list
    dist: list
    intrinsic_error_px: tuple[float, float]
    rig_error_px: tuple[float, float]
    corners_dropped: int = 0
    picture: str = ""
    found_by: dict = field(default_factory=dict)
    intrinsics: str = "fitted"
    coverage: float = float("nan")
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` found. ``frames``: (T,) union of frame indices read;
    ``board2world``: (T, 4, 4) board pose per frame in the final world (NaN where unseen);
    ``pictures``: per camera, the report picture as an RGB array (H, W, 3) uint8."""

    rig: Rig
    board: Board
    config: CalibrateConfig
    cameras: tuple[CameraReport, ...]
    frames: np.ndarray
    board2world: np.ndarray
    world: str
    pictures: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {
            "board": asdict(self.board),
            "config": asdict(self.config),
            "world": self.world,
            "cameras": [asdict(c) for c in self.cameras],
            "warnings": list(self.warnings),
        }

    @property
    def warnings(self) -> tuple[str, ...]:
        """Every camera's quality warnings (:func:`check_intrinsics`), in camera order."""
        return tuple(w for c in self.cameras for w in c.warnings)


@dataclass(frozen=True)
class IntrinsicsResult:
    """What :func:`calibrate_intrinsics_only` found: per camera its lens (``intrinsics``), the
    quality check (``quality``), a report row (``cameras``; no rig columns) and picture."""

    board: Board
    config: CalibrateConfig
    cameras: tuple[CameraReport, ...]
    intrinsics: tuple[CameraIntrinsics, ...]
    quality: tuple[IntrinsicsQuality, ...]
    pictures: dict = field(default_factory=dict, repr=False)
    world: str = "none (intrinsics only)"

    def to_json(self) -> dict:
        return {
            "board": asdict(self.board),
            "config": asdict(self.config),
            "kind": "intrinsics",
            "cameras": [asdict(c) for c in self.cameras],
            "warnings": list(self.warnings),
        }

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(w for c in self.cameras for w in c.warnings)


def _stats(e) -> tuple[float, float]:
    e = np.asarray(e, np.float64)
    if e.size == 0:
        return (float("nan"), float("nan"))
    return (float(np.median(e)), float(np.percentile(e, 95)))


def _rig_errors(board, intr, rig, frames, board2world, rows):
    """Per camera: corner reprojection errors (pixels) of the world board poses, over its
    usable frames where the board pose was fitted to two or more views."""
    out = []
    obj = board.corners_board
    for c, cam in enumerate(rig):
        errs = []
        for k in range(len(frames)):
            f = rows[c][k]
            if f < 0 or not intr[c].usable[f] or not np.isfinite(board2world[k, 0, 0]):
                continue
            uv = intr[c].uv_pixels[f]
            ok = np.isfinite(uv[:, 0])
            if not ok.any():
                continue
            pw = obj[ok] @ board2world[k, :3, :3].T + board2world[k, :3, 3]
            r, _ = cv2.Rodrigues(cam.R_world2cam)
            proj, _ = cv2.projectPoints(pw, r, cam.t_world2cam, cam.K, cam.dist)
            errs.append(np.linalg.norm(proj.reshape(-1, 2) - uv[ok], axis=1))
        out.append(np.concatenate(errs) if errs else np.zeros(0))
    return out


def _picture(board, det, cam: Camera, board2world_k, all_dets_uv, rep: CameraReport) -> np.ndarray:
    """Preview frame with every usable corner ever detected (grey dots: coverage), this
    frame's detections (green circles) and their reprojections from the rig (red crosses),
    errors drawn 10x longer (yellow)."""
    img = cv2.cvtColor(det.preview, cv2.COLOR_GRAY2RGB)
    img = (img.astype(np.float32) * 0.6).astype(np.uint8)
    W, H = det.image_size
    s = max(1.0, max(W, H) / 1280)
    if s > 1:
        img = cv2.resize(img, (round(W / s), round(H / s)), interpolation=cv2.INTER_AREA)
    lw = 1
    for p in all_dets_uv:
        cv2.circle(img, (int(round(p[0] / s)), int(round(p[1] / s))), 1, (150, 150, 150), -1)
    f = int(np.flatnonzero(det.frames == det.preview_frame)[0])
    uv = det.uv_pixels[f]
    ok = np.isfinite(uv[:, 0])
    proj = None
    if board2world_k is not None and np.isfinite(board2world_k[0, 0]) and ok.any():
        pw = board.corners_board[ok] @ board2world_k[:3, :3].T + board2world_k[:3, 3]
        proj, _ = cv2.projectPoints(pw, cv2.Rodrigues(cam.R_world2cam)[0], cam.t_world2cam, cam.K, cam.dist)
        proj = proj.reshape(-1, 2)
    for i, p in enumerate(uv[ok]):
        q = (int(round(p[0] / s)), int(round(p[1] / s)))
        cv2.circle(img, q, max(3, round(4 / s)), (0, 255, 0), lw, cv2.LINE_AA)
        if proj is not None:
            r = proj[i]
            e = (int(round((p[0] + 10 * (r[0] - p[0])) / s)), int(round((p[1] + 10 * (r[1] - p[1])) / s)))
            cv2.line(img, q, e, (255, 255, 0), lw, cv2.LINE_AA)
            cv2.drawMarker(
                img, (int(round(r[0] / s)), int(round(r[1] / s))), (255, 0, 0), cv2.MARKER_CROSS, 6, lw, cv2.LINE_AA
            )
    lines = [
        f"{rep.camera}  frame {det.preview_frame}  {W}x{H}",
        f"frames: read {rep.frames_read}, board {rep.frames_detected}, intrinsics {rep.frames_intrinsics}, "
        f"rig {rep.frames_extrinsics}",
        f"reproj px (median/p95): intrinsic {rep.intrinsic_error_px[0]:.2f}/{rep.intrinsic_error_px[1]:.2f}, "
        + (f"rig {rep.rig_error_px[0]:.2f}/{rep.rig_error_px[1]:.2f}" if np.isfinite(rep.rig_error_px[0]) else "rig -"),
        "green: detected, red: reprojected, yellow: error x10, grey: all detections",
    ]
    band = img[: 8 + 16 * len(lines)]
    band[:] = (band.astype(np.float32) * 0.35).astype(np.uint8)  # darken behind the text
    for i, text in enumerate(lines):
        cv2.putText(img, text, (6, 16 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _found_by(c: CameraReport) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.found_by.items())) or "-"


def format_report(result: CalibrationResult | IntrinsicsResult) -> str:
    """A markdown table: one row per camera (found by: frames with the board per detector)."""
    if isinstance(result, IntrinsicsResult):
        lines = [
            "| camera | size | frames read | with board | found by | used | fx | fy | cx | cy | k1 | k2 | k3 "
            "| err px (med / p95) | coverage | warnings |",
            "|" + "---|" * 16,
        ]
        for c in result.cameras:
            K = np.asarray(c.K)
            lines.append(
                f"| {c.camera} | {c.image_size[0]}x{c.image_size[1]} | {c.frames_read} | {c.frames_detected} | "
                f"{_found_by(c)} | {c.frames_intrinsics} | {K[0, 0]:.1f} | {K[1, 1]:.1f} | {K[0, 2]:.1f} | "
                f"{K[1, 2]:.1f} | {c.dist[0]:+.4f} | {c.dist[1]:+.4f} | {c.dist[4]:+.4f} | "
                f"{c.intrinsic_error_px[0]:.3f} / {c.intrinsic_error_px[1]:.3f} | {100 * c.coverage:.0f}% | "
                f"{len(c.warnings)} |"
            )
        return "\n".join(lines)
    head = (
        "| camera | size | frames read | with board | found by | intrinsics | rig | fx | fy | cx | cy | k1 | k2 "
        "| intrinsic err px (med / p95) | rig err px (med / p95) |"
    )
    lines = [head, "|" + "---|" * 15]
    for c in result.cameras:
        K = np.asarray(c.K)
        used = c.frames_intrinsics if c.intrinsics == "fitted" else "given"
        lines.append(
            f"| {c.camera} | {c.image_size[0]}x{c.image_size[1]} | {c.frames_read} | {c.frames_detected} | "
            f"{_found_by(c)} | {used} | {c.frames_extrinsics} | {K[0, 0]:.1f} | {K[1, 1]:.1f} | {K[0, 2]:.1f} | "
            f"{K[1, 2]:.1f} | {c.dist[0]:+.4f} | {c.dist[1]:+.4f} | {c.intrinsic_error_px[0]:.3f} / "
            f"{c.intrinsic_error_px[1]:.3f} | {c.rig_error_px[0]:.3f} / {c.rig_error_px[1]:.3f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class RigDifference:
    """One camera of a rig against a reference (another calibration, or ground truth).

    focal_pct: max relative difference of fx, fy (percent); principal_px: max difference of
    cx, cy; rel_rotation_deg / rel_translation_mm: of the pose relative to the first camera;
    rotation_deg / centre_mm: of the world pose (meaningful when both share a world)."""

    camera: str
    focal_pct: float
    principal_px: float
    rel_rotation_deg: float
    rel_translation_mm: float
    rotation_deg: float
    centre_mm: float


def _angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip((np.trace(Ra.T @ Rb) - 1) / 2, -1.0, 1.0))))


def compare_rigs(rig: Rig, ref: Rig) -> tuple[RigDifference, ...]:
    """Per-camera differences of ``rig`` to ``ref`` (cameras matched by name)."""
    if sorted(rig.names) != sorted(ref.names):
        raise CalibrationError(f"the rigs have different cameras: {list(rig.names)} vs {list(ref.names)}")
    ref = ref.subset(rig.names)
    P = [_Rt_to_M(c.R_world2cam, c.t_world2cam) for c in rig]
    Q = [_Rt_to_M(c.R_world2cam, c.t_world2cam) for c in ref]
    out = []
    for i, (a, b) in enumerate(zip(rig, ref)):
        rel_a, rel_b = P[i] @ np.linalg.inv(P[0]), Q[i] @ np.linalg.inv(Q[0])
        out.append(
            RigDifference(
                camera=a.name,
                focal_pct=100 * float(np.max(np.abs(np.diag(a.K)[:2] / np.diag(b.K)[:2] - 1))),
                principal_px=float(np.abs(a.K[:2, 2] - b.K[:2, 2]).max()),
                rel_rotation_deg=_angle_deg(rel_a[:3, :3], rel_b[:3, :3]),
                rel_translation_mm=1000 * float(np.linalg.norm(rel_a[:3, 3] - rel_b[:3, 3])),
                rotation_deg=_angle_deg(a.R_world2cam, b.R_world2cam),
                centre_mm=1000 * float(np.linalg.norm(a.center_world - b.center_world)),
            )
        )
    return tuple(out)


def format_comparison(diffs: Sequence[RigDifference]) -> str:
    """A markdown table of :func:`compare_rigs`."""
    lines = [
        "| camera | focal % | principal px | rel. rotation deg | rel. translation mm | rotation deg | centre mm |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in diffs:
        lines.append(
            f"| {d.camera} | {d.focal_pct:.3f} | {d.principal_px:.2f} | {d.rel_rotation_deg:.3f} | "
            f"{d.rel_translation_mm:.1f} | {d.rotation_deg:.3f} | {d.centre_mm:.1f} |"
        )
    return "\n".join(lines)


# ==========================================================================================
# the whole calibration
# ==========================================================================================
def calibrate(
    sources: Mapping[str, str | Path] | Sequence[str | Path],
    cfg: CalibrateConfig = CalibrateConfig(),
    board: Board | str | Path | None = None,
    progress: bool = True,
    intrinsics: str | Path | Mapping[str, LensIntrinsics] | None = None,
) -> CalibrationResult:
    """Calibrate a rig from one board video / image folder per camera (see the module doc).

    ``board`` overrides ``cfg.board``. ``intrinsics``: an intrinsics file (from
    :func:`calibrate_intrinsics_only`), any rig file, or camera name -> :class:`LensIntrinsics`:
    the cameras named there keep that K and distortion (only their poses are fitted; they
    need no ``min_frames``). Nothing is written; see :func:`write_outputs`.
    """
    board = load_board(board if board is not None else cfg.board)
    infos = _probe(resolve_sources(sources))
    names = list(infos)
    given_from = str(intrinsics) if isinstance(intrinsics, (str, Path)) else "given"
    given = load_intrinsics(intrinsics) if isinstance(intrinsics, (str, Path)) else dict(intrinsics or {})
    unknown = sorted(set(given) - set(names))
    if given and len(unknown) == len(given):
        raise CalibrationError(
            f"the intrinsics ({given_from}) name cameras {unknown}, none of the sources' cameras {names}; "
            "name the sources like the cameras there (NAME=PATH)"
        )
    for n in names:
        if n in given and tuple(given[n].image_size) != tuple(infos[n].frame_size):
            raise CalibrationError(
                f"camera '{n}': its frames are {infos[n].frame_size[0]}x{infos[n].frame_size[1]} but the intrinsics "
                f"({given_from}) are for {given[n].image_size[0]}x{given[n].image_size[1]}; calibrate the "
                "intrinsics from photos of the same size (same camera mode)"
            )
    check_gaps(
        infos, {n: np.arange(i.num_frames) for n, i in infos.items()}, cfg.allow_gaps, CalibrationError,
        hint=", or pass allow_gaps (CLI: --allow-gaps) to calibrate without that camera's view of it",
    )  # fmt: skip
    extra = () if cfg.world_frame is None else (cfg.world_frame,)
    if cfg.world_frame is not None:
        counts = [infos[n].num_frames for n in names]
        if all(c > 0 for c in counts) and cfg.world_frame >= max(counts):
            raise CalibrationError(
                f"world_frame {cfg.world_frame} was not read: the sources have frames 0..{max(counts) - 1}; "
                "pick a frame in which the board lies on the floor"
            )
    dets = [
        detect_source(board, n, infos[n], cfg.frame_stride, cfg.max_frames, extra, progress, _fallback(cfg, infos[n]))
        for n in names
    ]
    intr = [
        calibrate_intrinsics(board, d, cfg, fixed=(given[d.camera].K, given[d.camera].dist))
        if d.camera in given
        else calibrate_intrinsics(board, d, cfg)
        for d in dets
    ]
    quality = [check_intrinsics(board, ci, cfg.quality) for ci in intr]
    rig = calibrate_extrinsics(board, dets, intr, cfg)
    frames, b2w, n_views = board_poses_world(board, dets, intr, rig)
    world = "camera 0"
    if cfg.world_frame is not None:
        k = np.flatnonzero(frames == cfg.world_frame)
        if len(k) == 0:
            raise CalibrationError(
                f"world_frame {cfg.world_frame} was not read: the sources have frames {int(frames[0])}.."
                f"{int(frames[-1])}; pick a frame in which the board lies on the floor"
            )
        if not np.isfinite(b2w[k[0], 0, 0]):
            seen = frames[np.isfinite(b2w[:, 0, 0])]
            near = seen[np.argsort(np.abs(seen - cfg.world_frame))[:5]] if len(seen) else []
            raise CalibrationError(
                f"world_frame {cfg.world_frame}: no camera has a usable view of the board in that frame "
                f"(nearest frames with one: {sorted(int(x) for x in near)}); pick a frame where the board lies "
                "on the floor in full view of at least one camera"
            )
        A = world_from_floor_board(b2w[k[0]], cfg.up)
        rig = align_to_board(rig, b2w[k[0]], cfg.up)
        b2w = np.einsum("ij,tjk->tik", A, b2w)
        world = f"board on the floor in frame {cfg.world_frame}, up = +{cfg.up.upper()}"
    _, rows = _frame_alignment(dets)
    rig_err = _rig_errors(board, intr, rig, frames, np.where((n_views >= 2)[:, None, None], b2w, np.nan), rows)
    reports, pictures = [], {}
    for c, (d, ci) in enumerate(zip(dets, intr)):
        shared = np.zeros(len(d.frames), bool)
        multi = n_views >= 2
        for k in np.flatnonzero(multi):
            f = rows[c][k]
            if f >= 0 and ci.usable[f]:
                shared[f] = True
        rep = CameraReport(
            camera=d.camera,
            source=str(d.source),
            image_size=tuple(d.image_size),
            frames_read=len(d.frames),
            frames_detected=int((d.counts > 0).sum()),
            frames_intrinsics=int(ci.used.sum()),
            frames_extrinsics=int(shared.sum()),
            K=ci.K.tolist(),
            dist=ci.dist.tolist(),
            intrinsic_error_px=_stats(ci.errors_px),
            rig_error_px=_stats(rig_err[c]),
            corners_dropped=int((np.isfinite(d.uv_pixels[..., 0]) & ~np.isfinite(ci.uv_pixels[..., 0])).sum()),
            found_by=d.found_by(),
            intrinsics=given_from if ci.fixed else "fitted",
            coverage=quality[c].coverage,
            warnings=quality[c].warnings,
        )
        k_prev = int(np.flatnonzero(frames == d.preview_frame)[0])
        usable_uv = ci.uv_pixels[ci.usable].reshape(-1, 2)
        usable_uv = usable_uv[np.isfinite(usable_uv[:, 0])]
        pictures[d.camera] = _picture(board, d, rig[c], b2w[k_prev], usable_uv, rep)
        reports.append(rep)
    return CalibrationResult(rig, board, cfg, tuple(reports), frames, b2w, world, pictures)


def calibrate_intrinsics_only(
    sources: Mapping[str, str | Path] | Sequence[str | Path],
    cfg: CalibrateConfig = CalibrateConfig(),
    board: Board | str | Path | None = None,
    progress: bool = True,
) -> IntrinsicsResult:
    """Each camera's lens (K, distortion) on its own, from its own board photos or video: no
    synchronisation, no views shared with another camera, one camera is enough. A camera
    needs ``cfg.min_frames_intrinsics_only`` usable views; the quality check
    (:func:`check_intrinsics`) warns when the fit is poorly constrained. Nothing is written;
    see :func:`write_outputs` (an intrinsics file for :func:`calibrate`'s ``intrinsics``)."""
    board = load_board(board if board is not None else cfg.board)
    infos = _probe(resolve_sources(sources))
    reports, intr, quality, pictures = [], [], [], {}
    for n, info in infos.items():
        d = detect_source(
            board, n, info, cfg.frame_stride, cfg.max_frames, progress=progress, fallback=_fallback(cfg, info)
        )
        ci = calibrate_intrinsics(board, d, cfg, min_frames=cfg.min_frames_intrinsics_only)
        q = check_intrinsics(board, ci, cfg.quality)
        rep = CameraReport(
            camera=n,
            source=str(d.source),
            image_size=tuple(d.image_size),
            frames_read=len(d.frames),
            frames_detected=int((d.counts > 0).sum()),
            frames_intrinsics=int(ci.used.sum()),
            frames_extrinsics=0,
            K=ci.K.tolist(),
            dist=ci.dist.tolist(),
            intrinsic_error_px=_stats(ci.errors_px),
            rig_error_px=(float("nan"), float("nan")),
            corners_dropped=int((np.isfinite(d.uv_pixels[..., 0]) & ~np.isfinite(ci.uv_pixels[..., 0])).sum()),
            found_by=d.found_by(),
            coverage=q.coverage,
            warnings=q.warnings,
        )
        # the picture: the camera as its own world, the preview frame's board at its fitted pose
        f = int(np.flatnonzero(d.frames == d.preview_frame)[0])
        cam = Camera(n, ci.K, ci.dist, np.eye(3), np.zeros(3), ci.image_size)
        b2c = _rvec_to_M(ci.rvec_board2cam[f], ci.t_board2cam[f]) if ci.usable[f] else None
        usable_uv = ci.uv_pixels[ci.used].reshape(-1, 2)
        pictures[n] = _picture(board, d, cam, b2c, usable_uv[np.isfinite(usable_uv[:, 0])], rep)
        reports.append(rep)
        intr.append(ci)
        quality.append(q)
    return IntrinsicsResult(board, cfg, tuple(reports), tuple(intr), tuple(quality), pictures)


@dataclass(frozen=True)
class LensIntrinsics:
    """One camera's lens as read by :func:`load_intrinsics`: K (3, 3), dist (5,) k1, k2, p1,
    p2, k3, image_size (width, height)."""

    K: np.ndarray
    dist: np.ndarray
    image_size: tuple[int, int]


INTRINSICS_KIND = "intrinsics"  # [metadata] kind of an intrinsics file


def save_intrinsics(result: IntrinsicsResult, path: str | Path) -> None:
    """Write an intrinsics file: the anipose/Pose2Sim TOML layout without camera poses (no
    ``rotation`` / ``translation``), ``[metadata] kind = "intrinsics"``, plus per camera the
    views used, the RMS error and the quality warnings. :func:`load_intrinsics` reads it;
    rig readers refuse it with a message pointing to ``mvcap calibrate --intrinsics``."""
    from .rigio import _fmt

    lines = [
        "# Camera intrinsics from mvcap calibrate --intrinsics-only: each camera's lens, NO camera poses.",
        "# Calibrate the rig's poses with these lenses held: mvcap calibrate ... --intrinsics <this file>",
        "",
    ]
    for i, (rep, ci) in enumerate(zip(result.cameras, result.intrinsics)):
        lines += [
            f"[cam_{i}]",
            f"name = {_fmt(rep.camera)}",
            f"size = {_fmt(list(ci.image_size))}",
            f"matrix = {_fmt(ci.K.tolist())}",
            f"distortions = {_fmt(ci.dist.tolist())}",
            f"views = {int(ci.used.sum())}",
            f"rms_px = {_fmt(ci.rms_px)}",
            f"warnings = {_fmt(list(rep.warnings))}",
            "",
        ]
    lines += [
        "[metadata]",
        'written_by = "mvcap"',
        f"kind = {_fmt(INTRINSICS_KIND)}",
        f"board = {_fmt(result.board.name)}",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_intrinsics(path: str | Path) -> dict[str, LensIntrinsics]:
    """Camera name -> :class:`LensIntrinsics` from an intrinsics file (:func:`save_intrinsics`)
    or from any rig file :func:`mvcap.rigio.load_rig` reads (its poses are ignored)."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"intrinsics file not found: {path}")
    if path.suffix.lower() == ".toml":
        text = read_text(path, "intrinsics file", CalibrationError)
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise CalibrationError(f"{path}: not valid TOML ({str(exc)[:300]})") from None
        meta = data.get("metadata", {})
        if isinstance(meta, dict) and meta.get("kind") == INTRINSICS_KIND:
            out = {}
            for section, entry in data.items():
                if section == "metadata" or not isinstance(entry, dict):
                    continue
                name = str(entry.get("name", section))
                missing = [k for k in ("size", "matrix", "distortions") if k not in entry]
                if missing:
                    raise CalibrationError(f"{path}: camera '{name}' (section [{section}]) is missing {missing}")
                try:
                    # Camera validates K, the distortion and the size; the pose is a placeholder
                    cam = Camera(name, entry["matrix"], entry["distortions"], np.eye(3), np.zeros(3), entry["size"])
                except (MvcapError, TypeError, ValueError) as exc:
                    raise CalibrationError(f"{path} (section [{section}]): {exc}") from None
                out[name] = LensIntrinsics(cam.K, cam.dist, tuple(cam.image_size))
            if not out:
                raise CalibrationError(f"{path}: no camera sections found (expected [cam_0], [cam_1], ...)")
            return out
    from .rigio import load_rig

    try:
        rig = load_rig(path)
    except MvcapError as exc:
        raise CalibrationError(
            f"intrinsics {path}: neither an intrinsics file (mvcap calibrate --intrinsics-only) nor a rig file ({exc})"
        ) from None
    return {c.name: LensIntrinsics(c.K, c.dist, tuple(c.image_size)) for c in rig}


def write_outputs(
    result: CalibrationResult | IntrinsicsResult, rig_path: str | Path, report_dir: str | Path | None = None
) -> list[Path]:
    """Write the rig (format by extension, :func:`mvcap.rigio.save_rig`), or for an
    :class:`IntrinsicsResult` the intrinsics file (``.toml``, :func:`save_intrinsics`), and the
    report (``report.json``, ``report.md``, ``<camera>.png``) under temporary names, then
    rename them into place, so an interrupted or failed run never leaves a complete-looking
    output. Returns the written paths."""
    from .rigio import save_rig

    rig_path = Path(rig_path)
    lens_only = isinstance(result, IntrinsicsResult)
    if lens_only and rig_path.suffix.lower() != ".toml":
        raise CalibrationError(
            f"--intrinsics-only writes an intrinsics TOML file, not {rig_path}; pass --out ending in .toml "
            "(e.g. intrinsics.toml)"
        )
    tag = f".tmp-{os.getpid()}"
    staged: list[tuple[Path, Path]] = []

    def stage(final: Path) -> Path:
        tmp = final.with_name(f".{final.stem}{tag}{final.suffix}")
        staged.append((tmp, final))
        return tmp

    try:
        if report_dir is not None:
            report_dir = Path(report_dir)
            report_dir.mkdir(parents=True, exist_ok=True)
            pics = {}
            for name, img in result.pictures.items():
                p = stage(report_dir / f"{name}.png")
                if not cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                    raise CalibrationError(f"cannot write {p}")
                pics[name] = str(report_dir / f"{name}.png")
            cams = [asdict(c) | {"picture": pics.get(c.camera, "")} for c in result.cameras]
            data = result.to_json() | {"cameras": cams, ("intrinsics" if lens_only else "rig"): str(rig_path)}
            stage(report_dir / "report.json").write_text(json.dumps(data, indent=2) + "\n")
            warns = "".join(f"- {w}\n" for w in result.warnings)
            md = (
                f"# Calibration report\n\nboard: {result.board.name} ({result.board.kind}, "
                f"{result.board.squares_x}x{result.board.squares_y} squares of {result.board.square_length * 1000:.1f} "
                f"mm)\n\nworld: {result.world}\n\n{'intrinsics' if lens_only else 'rig'}: {rig_path}\n\n"
                f"{format_report(result)}\n\n"
                + (f"## Warnings\n\n{warns}\n" if warns else "")
                + "".join(f"![{n}]({n}.png)\n" for n in pics)
            )
            stage(report_dir / "report.md").write_text(md)
        rig_path.parent.mkdir(parents=True, exist_ok=True)
        if lens_only:
            save_intrinsics(result, stage(rig_path))
        elif rig_path.suffix.lower() == ".toml":
            # the world's up axis: the floor board's (else unrecorded: ingest reads it from the cameras' layout)
            up = f"+{result.config.up}" if result.config.world_frame is not None else None
            save_rig(result.rig, stage(rig_path), up=up)
        else:
            # EasyMocap folders / yml pairs: written in place, last (only after the report)
            save_rig(result.rig, rig_path)
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [final for _, final in staged] + ([] if rig_path.suffix.lower() == ".toml" else [rig_path])
