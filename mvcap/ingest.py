"""Ingest: synchronized videos or image folders (one per camera) into a session file.

Sources, matched to the rig's camera names:

* a folder holding one video per camera, ``<camera>.mp4`` / ``.avi`` / ``.mov`` / ``.mkv``;
* a folder holding one image folder per camera, ``<camera>/*.png|jpg|...`` (files sorted
  naturally: ``img2`` before ``img10``);
* an explicit ``{camera: path}`` mapping, each path a video file or an image folder.

Timeline: session frame ``i`` is timeline frame ``t = start + stride * i``; camera ``c``
contributes its own frame ``t + offsets[c]`` (integer per-camera synchronisation offsets).
``stop`` (exclusive, on the timeline) defaults to the last frame every camera has.

Every check that can be made before writing is made before writing: camera names, image
sizes against the rig (naming the wrong camera), frame counts against the frame range.
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
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mvcap.cameras import Rig
from mvcap.capture import Session, SessionError, results_dir

__all__ = [
    "IngestConfig",
    "IngestError",
    "IngestResult",
    "SourceInfo",
    "FrameExport",
    "VIDEO_EXTS",
    "IMAGE_EXTS",
    "DEFAULT_IMAGE_FPS",
    "find_sources",
    "plan_frames",
    "ingest",
    "export_frames",
]

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_IMAGE_FPS = 30.0  # image folders carry no frame rate
_FPS_TOL = 0.01  # relative fps difference between videos still treated as the same rate
_ASPECT_TOL = 0.01


class IngestError(ValueError):
    """Sources cannot be ingested as asked; the message names the camera and how to fix it."""


@dataclass(frozen=True)
class IngestConfig:
    """What to ingest (loadable from TOML with :func:`mvcap.config.load_config`).

    start, stop: timeline frame range ``[start, stop)``; ``stop=None``: up to the last frame
      every camera has. stride: keep every ``stride``-th timeline frame.
    offsets: ``{camera: k}``, camera's frame index = timeline frame + k (default 0); in TOML
      a table ``[offsets]`` with ``cam1 = 3``.
    fps: source frame rate; None = from the videos (image folders: 30). The session's fps is
      ``fps / stride``.
    image_size: ``(width, height)`` to store every view at, None = the rig's sizes. The rig
      is rescaled to it (same field of view) and every source is resized to it, so sources
      may then be any uniform rescale of the calibrated image (same aspect ratio).
    count_frames: decode every video once to count its frames instead of trusting the
      container's header (exact, slower).
    compression: HDF5 compression of the frames: "gzip" (default, level 1, readable by every
      HDF5 tool), "lzf" (h5py-only) or None. See docs/session-format.md.
    """

    start: int = 0
    stop: int | None = None
    stride: int = 1
    offsets: dict[str, int] = field(default_factory=dict)
    fps: float | None = None
    image_size: tuple[int, int] | None = None
    count_frames: bool = False
    compression: str | None = "gzip"

    def __post_init__(self):
        if not isinstance(self.start, int) or self.start < 0:
            raise IngestError(f"start must be an integer >= 0, got {self.start!r}")
        if self.stop is not None and (not isinstance(self.stop, int) or self.stop <= self.start):
            raise IngestError(f"stop must be an integer > start ({self.start}) or None, got {self.stop!r}")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise IngestError(f"stride must be an integer >= 1, got {self.stride!r}")
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
        if self.compression not in ("lzf", "gzip", None):
            raise IngestError(f"compression must be 'lzf', 'gzip' or None, got {self.compression!r}")


@dataclass(frozen=True)
class SourceInfo:
    """One camera's source. frame_size: (width, height) of its frames; num_frames: the
    frame count (videos: the container's, unless counted); fps: None for image folders;
    files: the sorted image files (image folders only)."""

    camera: str
    path: Path
    kind: str  # "video" | "images"
    frame_size: tuple[int, int]
    num_frames: int
    fps: float | None
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    """path: the finished session; source_frames: (T,) timeline frame of each session frame;
    resumed_frames: frames found already written in a partial file; seconds: wall time."""

    path: Path
    num_frames: int
    fps: float
    source_frames: np.ndarray
    sources: dict[str, SourceInfo]
    resumed_frames: int
    seconds: float


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
def _natural_key(name: str):
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _video_frame_count(cap) -> int:
    """The container's frame count (may be wrong for some containers; see count_frames)."""
    return int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))


def _decode_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def _probe_video(camera: str, path: Path, count: bool) -> SourceInfo:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise IngestError(f"camera '{camera}': cannot open video {path} (unsupported codec or not a video)")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise IngestError(f"camera '{camera}': video {path} has no readable frame")
        n = _video_frame_count(cap)
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    if count or n <= 0:  # a missing count is common for streamed containers
        n = _decode_count(path)
    h, w = frame.shape[:2]
    return SourceInfo(camera, path, "video", (w, h), n, fps if fps > 0 else None)


def _probe_images(camera: str, path: Path) -> SourceInfo:
    files = _image_files(path)
    if not files:
        raise IngestError(f"camera '{camera}': image folder {path} holds no images ({', '.join(IMAGE_EXTS)})")
    first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise IngestError(f"camera '{camera}': cannot read image {files[0]}")
    h, w = first.shape[:2]
    return SourceInfo(camera, path, "images", (w, h), len(files), None, tuple(files))


def _discover(folder: Path) -> dict[str, Path]:
    """camera name -> video file or image folder, for every candidate in ``folder``."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            found.setdefault(p.stem, []).append(p)
        elif p.is_dir() and _image_files(p):
            found.setdefault(p.name, []).append(p)
    dupes = {c: ps for c, ps in found.items() if len(ps) > 1}
    if dupes:
        c, ps = next(iter(dupes.items()))
        raise IngestError(
            f"camera '{c}' has several sources in {folder}: {[p.name for p in ps]}; keep one (or pass an "
            "explicit {camera: path} mapping)"
        )
    return {c: ps[0] for c, ps in found.items()}


def find_sources(sources, rig: Rig, count_frames: bool = False) -> dict[str, SourceInfo]:
    """Match ``sources`` (a folder, or a ``{camera: path}`` mapping) to the rig's cameras and
    probe each: ``{camera: SourceInfo}`` in rig order. IngestError lists the rig cameras
    without a source and the sources without a rig camera."""
    if isinstance(sources, Mapping):
        paths = {str(c): Path(p) for c, p in sources.items()}
        where = "the given mapping"
    else:
        folder = Path(sources)
        if not folder.exists():
            raise IngestError(f"source folder {folder} does not exist")
        if not folder.is_dir():
            raise IngestError(
                f"{folder} is not a folder; give a folder with one video (<camera>.mp4/.avi/.mov/.mkv) or one "
                "image folder (<camera>/*.png|jpg) per camera"
            )
        paths = _discover(folder)
        where = str(folder)
        if not paths:
            raise IngestError(
                f"no videos (<camera>{'/'.join(VIDEO_EXTS)}) or image folders (<camera>/*.png|jpg) in {folder}"
            )
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
            + f". Name each video/image folder after its rig camera ({names}) or pass an explicit mapping"
        )
    infos = {}
    for n in names:
        p = paths[n]
        if not p.exists():
            raise IngestError(f"camera '{n}': source {p} does not exist")
        if p.is_dir():
            infos[n] = _probe_images(n, p)
        elif p.suffix.lower() in VIDEO_EXTS:
            infos[n] = _probe_video(n, p, count_frames)
        else:
            raise IngestError(f"camera '{n}': {p} is neither a video ({', '.join(VIDEO_EXTS)}) nor an image folder")
    return infos


def _check_sizes(infos: dict[str, SourceInfo], rig: Rig, image_size) -> None:
    bad = []
    for cam in rig:
        w, h = infos[cam.name].frame_size
        W, H = cam.image_size
        if (w, h) == (W, H):
            continue
        src = f"camera '{cam.name}': {infos[cam.name].path.name} is {w}x{h}"
        if image_size is not None and abs((w / h) / (W / H) - 1) <= _ASPECT_TOL:
            continue  # a uniform rescale of the calibrated image: resized on the way in
        if (w, h) == (H, W):
            bad.append(
                f"{src} but the rig calibrates it at {W}x{H}: width and height are swapped, so the video looks "
                "rotated by 90 degrees (phone videos carry a rotation flag; the camera may have been calibrated in "
                "the other orientation). Re-encode it upright (e.g. ffmpeg -vf transpose=1) or calibrate that "
                "orientation"
            )
        elif abs((w / h) / (W / H) - 1) <= _ASPECT_TOL:
            bad.append(
                f"{src} but the rig calibrates it at {W}x{H} (same aspect ratio). If it is the calibrated image "
                f"rescaled, pass image_size=(W, H) (CLI: --image-size {w} {h}) to store every view at one size "
                "with the rig rescaled"
            )
        else:
            bad.append(
                f"{src} but the rig calibrates it at {W}x{H} (a different aspect ratio: a crop or another camera?). "
                "Check that the video belongs to this camera and the rig file to this capture"
            )
    if bad:
        raise IngestError("image sizes do not match the rig: " + "; ".join(bad))


def plan_frames(infos: dict[str, SourceInfo], cfg: IngestConfig) -> np.ndarray:
    """(T,) timeline frames to ingest; IngestError naming each camera that is too short."""
    unknown = sorted(set(cfg.offsets) - set(infos))
    if unknown:
        raise IngestError(f"offsets name unknown camera(s) {unknown}; cameras are {list(infos)}")
    off = {c: cfg.offsets.get(c, 0) for c in infos}
    neg = [c for c in infos if cfg.start + off[c] < 0]
    if neg:
        need = max(-off[c] for c in neg)
        raise IngestError(
            f"camera(s) {neg} would read before their first frame (offset {[off[c] for c in neg]} with start "
            f"{cfg.start}); set start >= {need}"
        )
    if cfg.stop is None:
        n = min((info.num_frames - off[c] - cfg.start - 1) // cfg.stride + 1 for c, info in infos.items())
        if n < 1:
            short = min(infos, key=lambda c: infos[c].num_frames - off[c])
            raise IngestError(
                f"no frame to ingest: camera '{short}' has {infos[short].num_frames} frames, fewer than "
                f"start {cfg.start} + offset {off[short]} + 1"
            )
    else:
        n = len(range(cfg.start, cfg.stop, cfg.stride))
    last = cfg.start + cfg.stride * (n - 1)
    short = []
    for c, info in infos.items():
        need = last + off[c] + 1
        if info.num_frames < need:
            short.append(
                f"camera '{c}': {info.path.name} has {info.num_frames} frames but the range needs {need} "
                f"(start {cfg.start} + stride {cfg.stride} x {n - 1} + offset {off[c]} + 1)"
            )
    if short:
        fit = min((info.num_frames - off[c] - cfg.start - 1) // cfg.stride + 1 for c, info in infos.items())
        hint = (
            f"; lower stop to at most {cfg.start + cfg.stride * (fit - 1) + 1} (or leave it unset)" if fit >= 1 else ""
        )
        raise IngestError("a source is shorter than the frame range: " + "; ".join(short) + hint)
    return cfg.start + cfg.stride * np.arange(n, dtype=np.int64)


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


# ------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------
class _Reader:
    """Reads frames of one source in increasing index order, as RGB uint8 at a fixed size."""

    def __init__(self, info: SourceInfo, out_size: tuple[int, int]):
        self.info = info
        self.out_size = out_size
        self.cap = None
        self.pos = 0  # next frame the capture will return
        if info.kind == "video":
            self.cap = cv2.VideoCapture(str(info.path))
            if not self.cap.isOpened():
                raise IngestError(f"camera '{info.camera}': cannot open video {info.path}")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _fail(self, index: int, why: str) -> IngestError:
        return IngestError(
            f"camera '{self.info.camera}': {why} at frame {index} of {self.info.path}, although it reports "
            f"{self.info.num_frames} frames (the header may overstate its length, or the file is damaged). "
            "Lower stop below that frame, or rerun with count_frames (CLI: --count-frames) to count decodable frames"
        )

    def read(self, index: int) -> np.ndarray:
        info = self.info
        if info.kind == "images":
            path = info.files[index]
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise IngestError(f"camera '{info.camera}': cannot read image {path} (frame {index}; corrupt file?)")
        else:
            if index < self.pos:
                raise IngestError(f"internal: camera '{info.camera}' asked for frame {index} after {self.pos}")
            while self.pos < index:  # sequential decoding: exact, unlike seeking in many codecs
                if not self.cap.grab():
                    raise self._fail(self.pos, "decoding stopped")
                self.pos += 1
            ok, img = self.cap.read()
            if not ok or img is None:
                raise self._fail(index, "decoding stopped")
            self.pos += 1
        h, w = img.shape[:2]
        if (w, h) != info.frame_size:
            raise IngestError(
                f"camera '{info.camera}': frame {index} of {info.path} is {w}x{h}, its first frame is "
                f"{info.frame_size[0]}x{info.frame_size[1]}; all frames of a camera must share one size"
            )
        if (w, h) != self.out_size:
            shrink = w > self.out_size[0]
            img = cv2.resize(img, self.out_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------
# ingest
# ------------------------------------------------------------------------------------------
def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _fingerprint(infos, frames, cfg: IngestConfig, fps: float) -> dict:
    """What a partial file must match to be resumed (JSON-comparable)."""
    return {
        "sources": {
            c: {"path": str(i.path.resolve()), "kind": i.kind, "frame_size": list(i.frame_size)}
            for c, i in infos.items()
        },
        "start": int(cfg.start),
        "stride": int(cfg.stride),
        "num_frames": int(len(frames)),
        "offsets": {c: int(cfg.offsets.get(c, 0)) for c in infos},
        "source_fps": float(fps),
        "image_size": list(cfg.image_size) if cfg.image_size else None,
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
) -> IngestResult:
    """Ingest synchronized per-camera videos or image folders into the session file ``out``.

    sources: a folder (one ``<camera>.<video ext>`` or ``<camera>/`` image folder per rig
    camera) or a ``{camera: path}`` mapping. rig: a :class:`Rig` or a rig file path.
    Resumes ``<out>.partial`` left by an interrupted run of the same command; ``overwrite``
    discards it and replaces an existing ``out``. See the module docstring.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    if not isinstance(rig, Rig):
        from mvcap.rigio import load_rig

        rig = load_rig(rig)
    out = Path(out)
    partial = _partial_path(out)
    if out.exists() and not overwrite:
        raise IngestError(f"session file {out} already exists; pass overwrite (CLI: --overwrite) to replace it")
    if out.is_dir():
        raise IngestError(f"output {out} is a folder; give a session file path such as {out / 'session.h5'}")

    infos = find_sources(sources, rig, cfg.count_frames)
    _check_sizes(infos, rig, cfg.image_size)
    frames = plan_frames(infos, cfg)
    fps, fps_source = _source_fps(infos, cfg)
    fingerprint = _fingerprint(infos, frames, cfg, fps)
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
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        }
        session = Session.create(
            partial, rig, len(frames), image_size=cfg.image_size, fps=fps / cfg.stride, provenance=prov,
            compression=cfg.compression,
        )  # fmt: skip
    readers: list[_Reader] = []
    done_before = 0
    try:
        written = session.frames_written
        done_before = int(written.sum())
        readers = [_Reader(infos[c.name], c.image_size) for c in store_rig]
        offs = [cfg.offsets.get(c, 0) for c in rig.names]
        todo = np.flatnonzero(~written)
        for i in tqdm(todo, desc=f"ingest {out.name}", unit="frame", disable=not progress):
            t = int(frames[i])
            images = [r.read(t + k) for r, k in zip(readers, offs, strict=True)]
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
        fps=fps / cfg.stride,
        source_frames=frames,
        sources=infos,
        resumed_frames=done_before,
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------------------------
# export (the inverse)
# ------------------------------------------------------------------------------------------
def _frame_index(frames, written: np.ndarray) -> np.ndarray:
    T = written.shape[0]
    if frames is None:
        return np.flatnonzero(written)
    if isinstance(frames, slice):
        return np.arange(T)[frames]
    idx = np.asarray(list(frames) if not isinstance(frames, np.ndarray) else frames, dtype=np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= T)]
    if bad.size:
        raise IngestError(f"frame {int(bad[0])} out of range for a session of {T} frames")
    return idx


def export_frames(
    session_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "mp4",
    frames: Sequence[int] | slice | None = None,
    progress: bool = False,
) -> FrameExport:
    """Write a session's frames back out, one source per camera, plus ``rig.toml``.

    format: ``"mp4"`` (``<camera>.mp4``, MPEG-4 part 2 via cv2.VideoWriter: lossy) or
    ``"png"`` (``<camera>/000000.png`` ...: lossless). frames: session frames to write, in
    order (default: every written frame). The videos' frame rate is the session's.
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
        save_rig(s.rig, out_dir / "rig.toml")
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
