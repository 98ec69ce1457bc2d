"""Ingest: synchronized videos or image folders (one per camera) into a session file.

Sources (:mod:`mvcap.sources`), matched to the rig's camera names:

* a folder holding one video per camera, ``<camera>.mp4`` (any of ``VIDEO_EXTS``);
* a folder holding one image folder per camera, ``<camera>/*.png|jpg|...``;
* a list of ``NAME=PATH`` items or paths named after their cameras, or an explicit
  ``{camera: path}`` mapping, each path a video file or an image folder.

Frame identity: an image folder's frames are identified by the number in their file names,
not by their order (see :mod:`mvcap.sources`). A frame missing in one camera is an error naming
the camera and the frame, or, with ``allow_gaps``, a gap: that view of that frame is stored
black and recorded in the session's provenance (``ingest.missing``: camera -> session frames)
and in :attr:`IngestResult.missing`; it is never filled from a neighbouring file.

Timeline: ``frames`` selects timeline frames in the one frame grammar (:mod:`mvcap.frames`:
``START:STOP``, ``START:STOP:STEP``, ``::2``, lists, mixed); session frame ``i`` is the
``i``-th selected timeline frame ``t``, and camera ``c`` contributes its own frame
``t + offsets[c]`` (integer per-camera synchronisation offsets). An open range ends at the
last frame every camera has.

Every check that can be made before writing is made before writing: camera names, image
sizes against the rig (naming the wrong camera), frame counts against the frame range.

Frame size vs calibration (``fit``): the rig is the truth about each sensor, so frames whose
size differs from their camera's calibrated ``image_size`` are brought to that size, never the
rig to the frames (the stored rig describes the stored frames exactly). Without a ``fit`` mode a
mismatch is an error that says which mode fits; with one (session-wide or per camera):

* ``pad``: frames smaller than the calibration are placed centred on a black canvas of the
  calibrated size (frame pixel (u, v) is calibrated pixel (u + (W - w) // 2, v + (H - h) // 2));
* ``crop``: frames larger than the calibration are cropped to its centre (calibrated pixel
  (u, v) is frame pixel (u + (w - W) // 2, v + (h - H) // 2));
* ``pad-topleft`` / ``crop-topleft``: the same anchored at the top-left corner (offset 0): the
  case of a calibration made on a video's coded frames (1088 rows) for a 1080-row video, whose
  8 extra rows are padding at the bottom;
* ``resize``: frames that are a uniform rescale of the calibrated image (same aspect ratio to
  within a pixel) are resized to the calibrated size (the pixel-centre convention of
  :meth:`mvcap.cameras.Rig.with_image_size`).

Views may have different sizes (cameras of different resolutions): each is stored at its own
camera's size, and every later stage works per view.

Frames are written to ``<out>.partial``; only when every frame of every view is in and the
session is marked complete is it renamed to ``<out>``. An error removes the partial file
(unless the run was resuming one); an interrupted run (Ctrl-C, a killed process) leaves it,
and rerunning the same command resumes it, skipping the frames already written.

:func:`export_frames` is the inverse (a session back to videos or image folders plus the
rig as ``rig.toml``), for tests, demos and round trips.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mvcap.cameras import Rig
from mvcap.capture import Session, SessionError, results_dir
from mvcap.errors import MvcapError
from mvcap.frames import FrameSelection, format_frames, parse_frames, select_frames
from mvcap.sources import IMAGE_EXTS, VIDEO_EXTS, FrameReader, SourceInfo, check_gaps, probe_sources, resolve_sources

__all__ = [
    "IngestConfig",
    "IngestError",
    "IngestResult",
    "SourceInfo",
    "FrameExport",
    "VIDEO_EXTS",
    "IMAGE_EXTS",
    "DEFAULT_IMAGE_FPS",
    "FIT_MODES",
    "find_sources",
    "fit_offset",
    "fit_frame",
    "plan_frames",
    "ingest",
    "export_frames",
]

DEFAULT_IMAGE_FPS = 30.0  # image folders carry no frame rate
_FPS_TOL = 0.01  # relative fps difference between videos still treated as the same rate
#: how a camera's frames are brought to its calibrated size (see the module docstring)
FIT_MODES = ("crop", "crop-topleft", "pad", "pad-topleft", "resize")


class IngestError(MvcapError):
    """Sources cannot be ingested as asked; the message names the camera and how to fix it."""


@dataclass(frozen=True)
class IngestConfig:
    """What to ingest (loadable from TOML with :func:`mvcap.config.load_config`).

    frames: timeline frames to ingest in the frame grammar of :mod:`mvcap.frames` (e.g.
      ``"0:300"``, ``"::2"`` for every other frame, ``"10,20,30"``); "" = every frame every
      camera has. An open range (``"100:"``) ends at the last frame every camera has.
    allow_gaps: accept image-folder frames missing in some camera (stored black and recorded
      as missing, see the module docstring) instead of stopping with an error.
    offsets: ``{camera: k}``, camera's frame index = timeline frame + k (default 0); in TOML
      a table ``[offsets]`` with ``cam1 = 3``.
    fps: source frame rate; None = from the videos (image folders: 30). The session's fps is
      ``fps / step`` for evenly spaced frames (``fps`` otherwise; timestamps are exact).
    image_size: ``(width, height)`` to store every view at, None = the rig's sizes. The rig
      is rescaled to it (same field of view) and every source is resized to it, so sources
      may then be any uniform rescale of the calibrated image (same aspect ratio).
    fit: how frames whose size differs from their camera's calibrated size are brought to it:
      one of ``FIT_MODES`` (see the module docstring), "" = such a mismatch is an error saying
      which mode fits. Cameras whose frames match their calibration are never changed.
    fit_views: ``{camera: mode}`` overriding ``fit`` for single cameras (CLI:
      ``--fit cam01=pad``; TOML: a table ``[fit_views]`` with ``cam01 = "pad"``).
    count_frames: decode every video once to count its frames instead of trusting the
      container's header (exact, slower).
    compression: HDF5 compression of the frames: "gzip" (default, level 1, readable by every
      HDF5 tool), "lzf" (h5py-only) or None. See docs/session-format.md.
    """

    frames: str = ""
    allow_gaps: bool = False
    offsets: dict[str, int] = field(default_factory=dict)
    fps: float | None = None
    image_size: tuple[int, int] | None = None
    fit: str = ""
    fit_views: dict[str, str] = field(default_factory=dict)
    count_frames: bool = False
    compression: str | None = "gzip"

    def __post_init__(self):
        if not isinstance(self.frames, str):
            raise IngestError(f"frames must be a frame selection text such as '0:300' or '::2', got {self.frames!r}")
        parse_frames(self.frames)  # a malformed selection fails here, before any file is read
        offsets = dict(self.offsets or {})
        for cam, k in offsets.items():
            if not isinstance(cam, str) or isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise IngestError(f"offsets must map camera names to integers, got {cam!r}: {k!r}")
        object.__setattr__(self, "offsets", {c: int(k) for c, k in offsets.items()})
        if self.fps is not None and not float(self.fps) > 0:
            raise IngestError(f"fps must be positive, got {self.fps}")
        if self.image_size is not None:
            size = tuple(int(s) for s in self.image_size)
            if len(size) != 2 or min(size) <= 0:
                raise IngestError(f"image_size must be (width, height) > 0, got {self.image_size}")
            object.__setattr__(self, "image_size", size)
        for where, mode in [("fit", self.fit)] + [(f"fit_views.{c}", m) for c, m in (self.fit_views or {}).items()]:
            if mode not in FIT_MODES and not (where == "fit" and mode == ""):
                raise IngestError(f"{where} must be one of {', '.join(FIT_MODES)}, got {mode!r}")
        object.__setattr__(self, "fit_views", dict(self.fit_views or {}))
        if self.compression not in ("lzf", "gzip", None):
            raise IngestError(f"compression must be 'lzf', 'gzip' or None, got {self.compression!r}")


@dataclass(frozen=True)
class IngestResult:
    """path: the finished session; source_frames: (T,) timeline frame of each session frame;
    step: timeline frames between session frames (1 when unevenly spaced); missing: camera ->
    session frames stored black because that camera has no image there (``allow_gaps``);
    resumed_frames: frames found already written in a partial file; seconds: wall time; fits:
    camera -> the ``fit`` mode applied to its frames (cameras whose frames needed one)."""

    path: Path
    num_frames: int
    fps: float
    source_frames: np.ndarray
    sources: dict[str, SourceInfo]
    resumed_frames: int
    seconds: float
    step: int = 1
    missing: dict[str, np.ndarray] = field(default_factory=dict)
    fits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FrameExport:
    """What :func:`export_frames` wrote: one video or image folder per camera (``paths``),
    the rig (``rig_path``) and the session frames exported, in order (``frames`` (T',))."""

    out_dir: Path
    paths: dict[str, Path]
    rig_path: Path
    frames: np.ndarray


# ------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------
def find_sources(sources, rig: Rig, count_frames: bool = False) -> dict[str, SourceInfo]:
    """Match ``sources`` (a folder, ``NAME=PATH`` items / named paths, or a ``{camera: path}``
    mapping; see :func:`mvcap.sources.resolve_sources`) to the rig's cameras and probe each:
    ``{camera: SourceInfo}`` in rig order. IngestError lists the rig cameras without a source
    and the sources without a rig camera."""
    if isinstance(sources, (str, os.PathLike)) and not Path(sources).exists():
        raise IngestError(f"source folder {sources} does not exist")
    paths = resolve_sources(sources, error=IngestError)
    where = str(sources) if isinstance(sources, (str, os.PathLike)) else "the given sources"
    names = list(rig.names)
    missing = [n for n in names if n not in paths]
    extra = [c for c in paths if c not in names]
    if missing or extra:
        hints = [
            f"'{c}' differs from rig camera '{n}' only in case"
            for c in extra
            for n in missing
            if c.lower() == n.lower()
        ]
        raise IngestError(
            f"camera names in {where} do not match the rig: rig cameras without a source: {missing}; "
            f"sources without a rig camera: {[f'{c} ({paths[c].name})' for c in extra]}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + f". Name each video/image folder after its rig camera ({names}) or pass NAME=PATH per camera"
        )
    return probe_sources({n: paths[n] for n in names}, count_frames, error=IngestError)


def _resize_fits(frame_size: tuple[int, int], calib_size: tuple[int, int]) -> bool:
    """Is the frame a uniform rescale of the calibrated image (same aspect ratio to within a pixel)?"""
    (w, h), (W, H) = frame_size, calib_size
    return round(W * h / H) == w or round(H * w / W) == h


def fit_offset(frame_size: tuple[int, int], calib_size: tuple[int, int], mode: str) -> tuple[int, int]:
    """(dx, dy) with calibrated pixel = frame pixel + (dx, dy) for a ``crop*`` / ``pad*`` mode
    (negative for a crop, positive for a centred pad, 0 for the top-left variants). Sizes are
    (width, height); IngestError when the mode does not fit the sizes."""
    (w, h), (W, H) = (tuple(int(x) for x in s) for s in (frame_size, calib_size))
    if mode.startswith("pad"):
        if w > W or h > H:
            raise IngestError(f"fit '{mode}' needs frames no larger than the calibration ({W}x{H}), got {w}x{h}")
        return (0, 0) if mode == "pad-topleft" else ((W - w) // 2, (H - h) // 2)
    if mode.startswith("crop"):
        if w < W or h < H:
            raise IngestError(f"fit '{mode}' needs frames no smaller than the calibration ({W}x{H}), got {w}x{h}")
        return (0, 0) if mode == "crop-topleft" else (-((w - W) // 2), -((h - H) // 2))
    raise IngestError(f"fit_offset takes a crop or pad mode, got {mode!r}")


def fit_frame(image: np.ndarray, calib_size: tuple[int, int], mode: str) -> np.ndarray:
    """image (h, w, C) -> (H, W, C) at the calibrated size ``calib_size`` = (W, H), by ``mode``
    (one of ``FIT_MODES``); padding is black. See :func:`fit_offset` for the pixel mapping."""
    h, w = image.shape[:2]
    W, H = (int(x) for x in calib_size)
    if (w, h) == (W, H):
        return image
    if mode == "resize":
        if not _resize_fits((w, h), (W, H)):
            raise IngestError(f"fit 'resize' needs the calibration's aspect ratio ({W}x{H}), got {w}x{h}")
        return cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA if w > W else cv2.INTER_LINEAR)
    dx, dy = fit_offset((w, h), (W, H), mode)
    if mode.startswith("crop"):
        return np.ascontiguousarray(image[-dy : -dy + H, -dx : -dx + W])
    out = np.zeros((H, W) + image.shape[2:], image.dtype)
    out[dy : dy + h, dx : dx + w] = image
    return out


def _fit_hint(cam: str, w: int, h: int, W: int, H: int) -> str:
    """Which fit mode suits frames of w x h for a camera calibrated at W x H (for the error)."""

    def amount(n: int, what: str) -> str:
        return f"{n} {what}{'s' if n != 1 else ''}"

    if w <= W and h <= H:
        diff = " and ".join(amount(n, k) for n, k in ((W - w, "column"), (H - h, "row")) if n)
        how, mode = f"{diff} fewer than the calibration", "pad"
    elif w >= W and h >= H:
        diff = " and ".join(amount(n, k) for n, k in ((w - W, "column"), (h - H, "row")) if n)
        how, mode = f"{diff} more than the calibration", "crop"
    else:
        return ""
    return (
        f" ({how}). If the frames are the calibrated image with {'a border' if mode == 'crop' else 'part'} "
        f"cut off, pass --fit {mode} (centred; --fit {mode}-topleft keeps the top-left corner, e.g. a calibration "
        f"made on a video's 1088-row coded frames; --fit {cam}={mode} for this camera only), or calibrate at "
        f"{w}x{h}"
    )


def _check_sizes(infos: dict[str, SourceInfo], rig: Rig, cfg: IngestConfig) -> dict[str, str]:
    """{camera: fit mode} for the cameras whose frames differ from their calibrated size;
    IngestError naming each camera whose mismatch no mode (or not the one given) fits."""
    unknown = sorted(set(cfg.fit_views) - set(rig.names))
    if unknown:
        raise IngestError(
            f"--fit CAM=MODE (fit_views) names unknown camera(s) {unknown}; cameras are {list(rig.names)}"
        )
    fits, bad = {}, []
    for cam in rig:
        w, h = infos[cam.name].frame_size
        W, H = cam.image_size
        if (w, h) == (W, H):
            continue
        src = f"camera '{cam.name}': {infos[cam.name].path.name} is {w}x{h}"
        mode = cfg.fit_views.get(cam.name, cfg.fit)
        if mode:
            ok = _resize_fits((w, h), (W, H)) if mode == "resize" else (
                (w <= W and h <= H) if mode.startswith("pad") else (w >= W and h >= H)
            )  # fmt: skip
            if ok:
                fits[cam.name] = mode
                continue
            need = {"resize": "the calibration's aspect ratio", "pad": "frames no larger than the calibration"}
            hint = _fit_hint(cam.name, w, h, W, H)
            bad.append(
                f"{src} but the rig calibrates it at {W}x{H}: fit '{mode}' needs "
                f"{need.get(mode.split('-')[0], 'frames no smaller than the calibration')}"
                + (hint or ("; pass --fit resize" if _resize_fits((w, h), (W, H)) else ""))
            )
            continue
        if cfg.image_size is not None and _resize_fits((w, h), (W, H)):
            continue  # a uniform rescale of the calibrated image: resized on the way in
        if (w, h) == (H, W):
            bad.append(
                f"{src} but the rig calibrates it at {W}x{H}: width and height are swapped, so the video looks "
                "rotated by 90 degrees (phone videos carry a rotation flag; the camera may have been calibrated in "
                "the other orientation). Re-encode it upright (e.g. ffmpeg -vf transpose=1) or calibrate that "
                "orientation"
            )
        elif _resize_fits((w, h), (W, H)):
            bad.append(
                f"{src} but the rig calibrates it at {W}x{H} (same aspect ratio). If it is the calibrated image "
                f"rescaled, pass --fit resize (--fit {cam.name}=resize for this camera only) to resize it to the "
                f"calibrated size, or image_size=(W, H) (CLI: --image-size {w} {h}) to store every view at one size "
                "with the rig rescaled"
            )
        elif hint := _fit_hint(cam.name, w, h, W, H):
            bad.append(f"{src} but the rig calibrates it at {W}x{H}{hint}")
        else:
            bad.append(
                f"{src} but the rig calibrates it at {W}x{H} (a different aspect ratio: a crop or another camera?). "
                "Check that the video belongs to this camera and the rig file to this capture"
            )
    if bad:
        raise IngestError("image sizes do not match the rig: " + "; ".join(bad))
    return fits


_ALL = FrameSelection(((0, None, 1),), "0:")


def plan_frames(infos: dict[str, SourceInfo], cfg: IngestConfig) -> np.ndarray:
    """(T,) timeline frames to ingest (``cfg.frames`` resolved); IngestError naming each camera
    that is too short or would read before its first frame."""
    unknown = sorted(set(cfg.offsets) - set(infos))
    if unknown:
        raise IngestError(f"offsets name unknown camera(s) {unknown}; cameras are {list(infos)}")
    off = {c: cfg.offsets.get(c, 0) for c in infos}
    sel = parse_frames(cfg.frames) or _ALL
    # timeline frames every camera has: t + off[c] < num_frames[c]
    common = min(info.num_frames - off[c] for c, info in infos.items())
    if sel.open_ended and common < 1:
        short = min(infos, key=lambda c: infos[c].num_frames - off[c])
        raise IngestError(
            f"no frame to ingest: camera '{short}' has {infos[short].num_frames} frames, fewer than its offset "
            f"{off[short]} + 1"
        )
    frames = sel.resolve(common if sel.open_ended else None, what="the frames every camera has", check=False)
    first = int(frames[0])
    neg = [c for c in infos if first + off[c] < 0]
    if neg:
        need = max(-off[c] for c in neg)
        raise IngestError(
            f"camera(s) {neg} would read before their first frame (offset {[off[c] for c in neg]} at timeline frame "
            f"{first}); start at frame >= {need} (e.g. --frames {need}:)"
        )
    last = int(frames[-1])
    short = [
        f"camera '{c}': {info.path.name} has {info.num_frames} frames but the range needs {last + off[c] + 1} "
        f"(frame {last} + offset {off[c]} + 1)"
        for c, info in infos.items()
        if info.num_frames < last + off[c] + 1
    ]
    if short:
        hint = f"; lower stop to at most {common} (or leave STOP out: --frames {first}:)" if common > first else ""
        raise IngestError("a source is shorter than the frame range: " + "; ".join(short) + hint)
    return frames


def _step(frames: np.ndarray) -> int:
    """Timeline frames between session frames: the common difference, 1 when uneven or single."""
    d = np.diff(frames)
    return int(d[0]) if d.size and (d == d[0]).all() else 1


def _source_fps(infos: dict[str, SourceInfo], cfg: IngestConfig) -> tuple[float, str]:
    if cfg.fps is not None:
        return float(cfg.fps), "config"
    rates = {c: i.fps for c, i in infos.items() if i.kind == "video" and i.fps}
    if not rates:
        return DEFAULT_IMAGE_FPS, "default"
    lo, hi = min(rates.values()), max(rates.values())
    if hi / lo - 1 > _FPS_TOL:
        raise IngestError(
            f"the videos have different frame rates {rates}; synchronized cameras should share one. Pass fps "
            "(CLI: --fps) to state the rate to use"
        )
    return float(np.median(list(rates.values()))), "video"


_READ_HINT = (
    ". Lower STOP below that frame (--frames), or rerun with count_frames (CLI: --count-frames) to count "
    "decodable frames"
)


def _read_rgb(reader: FrameReader, index: int, out_size: tuple[int, int], fit: str = "", calib_size=None) -> np.ndarray:
    """Frame ``index`` as RGB uint8 at ``out_size`` (width, height), cropped or padded to
    ``calib_size`` first by a crop/pad ``fit`` (a resize goes straight to ``out_size``)."""
    img = reader.read(index)
    if fit and fit != "resize":
        img = fit_frame(img, calib_size, fit)
    h, w = img.shape[:2]
    if (w, h) != out_size:
        shrink = w > out_size[0]
        img = cv2.resize(img, out_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------
# ingest
# ------------------------------------------------------------------------------------------
def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _fingerprint(infos, frames, cfg: IngestConfig, fps: float, fits: dict[str, str]) -> dict:
    """What a partial file must match to be resumed (JSON-comparable)."""
    return {
        "sources": {
            c: {"path": str(i.path.resolve()), "kind": i.kind, "frame_size": list(i.frame_size)}
            for c, i in infos.items()
        },
        "frames": format_frames(frames),
        "num_frames": int(len(frames)),
        "offsets": {c: int(cfg.offsets.get(c, 0)) for c in infos},
        "source_fps": float(fps),
        "image_size": list(cfg.image_size) if cfg.image_size else None,
        "fits": dict(fits),
    }


class _WriteFailed(Exception):
    """A frame could not be written (disk full, I/O error): the partial file is kept."""

    def __init__(self, frame: int, cause: SessionError):
        super().__init__(str(cause))
        self.frame, self.cause = frame, cause


def _frames_kept(partial: Path) -> int | str:
    """Frames a partial file holds for every view after a failed write (what a rerun keeps)."""
    try:
        with Session.open(partial) as s:
            return int(s.frames_written.sum())
    except SessionError:
        return "?"


def _open_for_resume(partial: Path, rig: Rig, fingerprint: dict) -> Session:
    try:
        s = Session.open(partial, mode="a")
    except SessionError as exc:
        raise IngestError(
            f"an unreadable partial ingest {partial} is in the way ({exc}); delete it or pass overwrite "
            "(CLI: --overwrite)"
        ) from exc
    try:
        stored = s.provenance.get("ingest", {}).get("fingerprint")
        want_rig = rig if fingerprint["image_size"] is None else rig.with_image_size(tuple(fingerprint["image_size"]))
        same_rig = all(
            np.array_equal(a, b) for a, b in zip(s.rig.to_arrays().values(), want_rig.to_arrays().values(), strict=True)
        )
        stored_json = json.loads(json.dumps(stored))
        if stored_json != fingerprint or not same_rig:
            diff = sorted(k for k in fingerprint if not stored or stored.get(k) != fingerprint[k])
            if not same_rig:
                diff.append("rig")
            raise IngestError(
                f"a partial ingest {partial} exists from a different command (differs in: {diff}); rerun the "
                "original command to resume it, or pass overwrite (CLI: --overwrite) to start over"
            )
    except BaseException:
        s.close()
        raise
    return s


def ingest(
    sources,
    rig: Rig | str | os.PathLike,
    out: str | os.PathLike,
    cfg: IngestConfig = IngestConfig(),
    *,
    overwrite: bool = False,
    progress: bool = True,
    world_up: str | None = None,
) -> IngestResult:
    """Ingest synchronized per-camera videos or image folders into the session file ``out``.

    sources: a folder (one ``<camera>.<video ext>`` or ``<camera>/`` image folder per rig
    camera) or a ``{camera: path}`` mapping. rig: a :class:`Rig` or a rig file path.
    world_up: the world's up axis to record (``"+z"``, ...); default: the rig file's
    (:func:`mvcap.rigio.rig_world_up`), none recorded when unknown (exports then assume +Y).
    Resumes ``<out>.partial`` left by an interrupted run of the same command; ``overwrite``
    discards it and replaces an existing ``out``. See the module docstring.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    if not isinstance(rig, Rig):
        from mvcap.rigio import load_rig, rig_world_up

        world_up = world_up or rig_world_up(rig)
        rig = load_rig(rig)
    out = Path(out)
    partial = _partial_path(out)
    if out.exists() and not overwrite:
        raise IngestError(f"session file {out} already exists; pass overwrite (CLI: --overwrite) to replace it")
    if out.is_dir():
        raise IngestError(f"output {out} is a folder; give a session file path such as {out / 'session.h5'}")

    infos = find_sources(sources, rig, cfg.count_frames)
    fits = _check_sizes(infos, rig, cfg)
    frames = plan_frames(infos, cfg)
    offs = {c: cfg.offsets.get(c, 0) for c in rig.names}
    gaps = check_gaps(
        infos, {c: frames + offs[c] for c in rig.names}, cfg.allow_gaps, IngestError,
        hint=", or pass allow_gaps (CLI: --allow-gaps) to store it black and record it as missing",
    )  # fmt: skip
    # camera -> session frames without an image (stored black)
    missing = {c: np.flatnonzero(np.isin(frames + offs[c], g)) for c, g in gaps.items()}
    fps, fps_source = _source_fps(infos, cfg)
    step = _step(frames)
    fingerprint = _fingerprint(infos, frames, cfg, fps, fits)
    store_rig = rig if cfg.image_size is None else rig.with_image_size(cfg.image_size)

    resumed = False
    if partial.exists() and overwrite:
        partial.unlink()
    if partial.exists():
        session = _open_for_resume(partial, rig, fingerprint)
        resumed = True
    else:
        prov = {
            "ingest": {
                "fingerprint": fingerprint,
                "config": dataclasses.asdict(cfg),
                "fps_source": fps_source,
                "source_frame_counts": {c: i.num_frames for c, i in infos.items()},
                "missing": {c: m.tolist() for c, m in missing.items()},
                # frames brought to their calibrated size (see the module docstring)
                "fit": {
                    c: {"mode": m, "frame_size": list(infos[c].frame_size), "calibrated_size": list(rig[c].image_size)}
                    for c, m in fits.items()
                },
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        }
        session = Session.create(
            partial, rig, len(frames), image_size=cfg.image_size, fps=fps / step, provenance=prov,
            compression=cfg.compression,
        )  # fmt: skip
        if world_up:
            session.set_world_convention(world_up)
    readers: list[FrameReader] = []
    done_before = 0
    try:
        written = session.frames_written
        done_before = int(written.sum())
        readers = [FrameReader(infos[c.name], IngestError, hint=_READ_HINT) for c in store_rig]
        sizes = [c.image_size for c in store_rig]
        calib = [c.image_size for c in rig]
        todo = np.flatnonzero(~written)
        for i in tqdm(todo, desc=f"ingest {out.name}", unit="frame", disable=not progress):
            t = int(frames[i])
            images = []
            for r, size, csize in zip(readers, sizes, calib, strict=True):
                c = r.info.camera
                if c in missing and i in missing[c]:  # an accepted gap: black, recorded in the provenance
                    images.append(np.zeros((size[1], size[0], 3), np.uint8))
                else:
                    images.append(_read_rgb(r, t + offs[c], size, fits.get(c, ""), csize))
            try:
                # flushes and checks; a frame is marked written only once its images are on disk
                session.write_frame(int(i), images, timestamp=t / fps)
            except SessionError as exc:
                raise _WriteFailed(int(i), exc) from exc
        session.mark_complete()
        session.close()  # raises if the last data could not be written out
    except _WriteFailed as exc:
        for r in readers:
            r.close()
        with contextlib.suppress(SessionError):  # the error in flight says more
            session.close()
        kept = _frames_kept(partial)
        raise IngestError(
            f"ingest stopped at frame {exc.frame}: {getattr(exc.cause, 'failure', exc.cause)}. The {kept} frame(s) "
            "written so far are kept in "
            f"{partial}: free disk space and rerun the same command to resume"
        ) from exc.cause
    except BaseException as exc:
        for r in readers:
            r.close()
        with contextlib.suppress(SessionError):  # the error in flight says more
            session.close()
        # keep the partial file when interrupted (to resume), when it holds an earlier run's work or when
        # a write failed (the frames before it are intact); otherwise nothing of value is in it
        if isinstance(exc, Exception) and not resumed and not isinstance(exc, SessionError):
            partial.unlink(missing_ok=True)
        raise
    for r in readers:
        r.close()
    results = results_dir(out)
    if results.is_dir():  # results of the session file being replaced
        shutil.rmtree(results)
    os.replace(partial, out)  # atomic: `out` exists only once complete
    return IngestResult(
        path=out,
        num_frames=len(frames),
        fps=fps / step,
        source_frames=frames,
        sources=infos,
        resumed_frames=done_before,
        seconds=time.perf_counter() - t0,
        step=step,
        missing=missing,
        fits=fits,
    )


# ------------------------------------------------------------------------------------------
# export (the inverse)
# ------------------------------------------------------------------------------------------
def _frame_index(frames, written: np.ndarray) -> np.ndarray:
    """Session frames to export: every written frame by default, else any frame request that
    :func:`mvcap.frames.select_frames` takes, checked against the session's length."""
    if frames is None:
        return np.flatnonzero(written)
    return select_frames(frames, written.shape[0])


def export_frames(
    session_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "mp4",
    frames: Sequence[int] | slice | str | None = None,
    progress: bool = False,
) -> FrameExport:
    """Write a session's frames back out, one source per camera, plus ``rig.toml``.

    format: ``"mp4"`` (``<camera>.mp4``, MPEG-4 part 2 via cv2.VideoWriter: lossy) or
    ``"png"`` (``<camera>/000000.png`` ...: lossless). frames: session frames to write, in
    order (default: every written frame; a selection text such as ``"0:10"`` works too). The
    videos' frame rate is the session's.
    """
    from tqdm import tqdm

    from mvcap.rigio import save_rig

    if format not in ("mp4", "png"):
        raise IngestError(f"format must be 'mp4' or 'png', got {format!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with Session.open(session_path) as s:
        idx = _frame_index(frames, s.frames_written)
        if idx.size == 0:
            raise IngestError(f"no frames to export from {session_path}")
        save_rig(s.rig, out_dir / "rig.toml", up=s.world_up)  # keep the world convention
        for v in s.view_names:
            w, h = s.image_sizes[v]
            if format == "mp4":
                path = out_dir / f"{v}.mp4"
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(s.fps), (w, h))
                if not writer.isOpened():
                    raise IngestError(f"OpenCV cannot write {path} with the mp4v codec; export format='png' instead")
                try:
                    for t in tqdm(idx, desc=f"export {v}", unit="frame", disable=not progress):
                        writer.write(cv2.cvtColor(s.read_view(v, [int(t)])[0], cv2.COLOR_RGB2BGR))
                finally:
                    writer.release()
            else:
                path = out_dir / v
                path.mkdir(exist_ok=True)
                for k, t in enumerate(tqdm(idx, desc=f"export {v}", unit="frame", disable=not progress)):
                    img = cv2.cvtColor(s.read_view(v, [int(t)])[0], cv2.COLOR_RGB2BGR)
                    if not cv2.imwrite(str(path / f"{k:06d}.png"), img):
                        raise IngestError(f"cannot write {path / f'{k:06d}.png'}")
            paths[v] = path
    return FrameExport(out_dir=out_dir, paths=paths, rig_path=out_dir / "rig.toml", frames=idx)
