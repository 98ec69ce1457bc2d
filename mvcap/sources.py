"""Camera sources: finding and reading one video or image folder per camera.

Used by calibration (board videos) and ingest (capture videos) alike.

Finding (:func:`resolve_sources`): a ``{camera: path}`` mapping, or a list whose items are
``NAME=PATH`` or paths whose names name the cameras (``calib/cam00.mp4``, ``calib/cam00/`` with
images), or one folder holding one video (``<camera>.mp4`` ...) or image folder
(``<camera>/``) per camera. Video types: :data:`VIDEO_EXTS`; image types: :data:`IMAGE_EXTS`.

Frame identity: a video's frame ``i`` is its ``i``-th decoded frame. An image folder's frames
are identified by the number in their file names (the last run of digits: ``img_000123.png``
is frame 123), never by their position in the listing, so that a frame missing in one camera
cannot shift that camera against the others. Numbers count from the smallest number any
image-folder camera starts at (folders numbered from 1 start at frame 0 like videos). A frame
number that a camera has no file for is a gap: an error naming the camera and the frame,
unless the caller explicitly accepts gaps (see :func:`check_gaps`).

Errors are raised as the caller's error type (``error=``, an :class:`MvcapError` subclass such
as ``IngestError`` or ``CalibrationError``), so each command reports them as its own.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mvcap.errors import MvcapError

__all__ = [
    "VIDEO_EXTS",
    "IMAGE_EXTS",
    "SourceError",
    "SourceInfo",
    "FrameReader",
    "natural_key",
    "image_files",
    "is_source",
    "resolve_sources",
    "probe_sources",
    "check_gaps",
]

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class SourceError(MvcapError):
    """A camera source cannot be found or read (default error type of this module)."""


def natural_key(name: str) -> list:
    """Sort key in which ``img2`` comes before ``img10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def image_files(folder: Path) -> list[Path]:
    """The images in ``folder`` (no hidden files), sorted naturally."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def is_source(path: Path) -> bool:
    """A video file of a known type, or a folder holding images."""
    return (path.is_file() and path.suffix.lower() in VIDEO_EXTS) or (path.is_dir() and bool(image_files(path)))


def resolve_sources(sources, error: type[MvcapError] = SourceError) -> dict[str, Path]:
    """Camera name -> video file or image folder (see the module docstring for the forms).

    Names keep the given order (a folder's entries are sorted naturally). Every path is checked
    to exist and to be a video of a known type or a folder with images.
    """
    if isinstance(sources, Mapping):
        pairs = [(str(k), Path(v)) for k, v in sources.items()]
    else:
        if isinstance(sources, (str, Path)):
            sources = [sources]
        pairs = []
        for item in (str(p) for p in sources):
            name, sep, rest = item.partition("=")
            if sep and name and not Path(item).exists():
                pairs.append((name.strip(), Path(rest)))
            else:
                pairs.append((None, Path(item)))
        if len(pairs) == 1 and pairs[0][0] is None and pairs[0][1].is_dir() and not image_files(pairs[0][1]):
            folder = pairs[0][1]
            children = sorted(
                (p for p in folder.iterdir() if not p.name.startswith(".") and is_source(p)),
                key=lambda p: natural_key(p.name),
            )
            if not children:
                raise error(
                    f"{folder} holds no videos ({', '.join(VIDEO_EXTS)}) and no image folders "
                    f"(<camera>/ with {', '.join(IMAGE_EXTS)}); pass one video file or image folder per camera"
                )
            pairs = [(None, p) for p in children]
    out: dict[str, Path] = {}
    for name, p in pairs:
        name = name or (p.name if p.is_dir() else p.stem)
        if name in out:
            raise error(
                f"two sources would both name camera '{name}' ({out[name]} and {p}); keep one, or pass NAME=PATH"
            )
        out[name] = p
    if not out:
        raise error("no camera sources given; pass one video file or image folder per camera")
    for name, p in out.items():
        if not p.exists():
            raise error(f"camera '{name}': source {p} does not exist")
        if p.is_dir() and not image_files(p):
            raise error(f"camera '{name}': folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
        if p.is_file() and p.suffix.lower() not in VIDEO_EXTS:
            hint = "pass the folder of images instead" if p.suffix.lower() in IMAGE_EXTS else "not a known video type"
            raise error(f"camera '{name}': {p}: {hint} (videos: {', '.join(VIDEO_EXTS)})")
    return out


# ------------------------------------------------------------------------------------------
# probing
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceInfo:
    """One camera's source.

    frame_size: (width, height) of its first frame. num_frames: videos: the frame count (the
    container's unless counted); image folders: one past the highest frame number (gaps
    included). fps: None for image folders. files / frame_ids: image folders only, the image
    files and their frame numbers (counted from the common first number), sorted by frame.
    """

    camera: str
    path: Path
    kind: str  # "video" | "images"
    frame_size: tuple[int, int]
    num_frames: int
    fps: float | None
    files: tuple[Path, ...] = ()
    frame_ids: tuple[int, ...] = ()

    def file_for(self, frame: int) -> Path | None:
        """The image file of ``frame`` (None: a gap); image folders only."""
        k = bisect.bisect_left(self.frame_ids, frame)  # O(log n), no array per call
        return self.files[k] if k < len(self.frame_ids) and self.frame_ids[k] == frame else None

    def lacks(self, frames) -> np.ndarray:
        """The frames of ``frames`` (int array) this source has no image for (videos: none)."""
        frames = np.asarray(frames, np.int64).reshape(-1)
        if self.kind != "images":
            return frames[:0]
        return frames[~np.isin(frames, np.asarray(self.frame_ids, np.int64))]


def _file_numbers(camera: str, folder: Path, files: list[Path], error) -> np.ndarray:
    """(n,) the frame number in each file name (the last run of digits of the stem)."""
    nums = []
    for p in files:
        digits = re.findall(r"\d+", p.stem)
        if not digits:
            raise error(
                f"camera '{camera}': image {p} has no frame number in its name; frames are matched across "
                "cameras by the number in their file names, so name each image by its frame (e.g. 000123.png)"
            )
        nums.append(int(digits[-1]))
    nums = np.asarray(nums, np.int64)
    uniq, counts = np.unique(nums, return_counts=True)
    if (counts > 1).any():
        n = int(uniq[counts > 1][0])
        same = [p.name for p, k in zip(files, nums, strict=True) if k == n]
        raise error(
            f"camera '{camera}': several images in {folder} have frame number {n} ({same}); keep one image per frame"
        )
    return nums


def _decode_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def _video_frame_count(cap) -> int:
    """The container's frame count (may be wrong for some containers; see count_frames)."""
    return int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))


def _probe_video(camera: str, path: Path, count: bool, error) -> SourceInfo:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise error(f"camera '{camera}': cannot open video {path} (unsupported codec or not a video)")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise error(f"camera '{camera}': video {path} has no readable frame")
        n = _video_frame_count(cap)
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    if count or n <= 0:  # a missing count is common for streamed containers
        n = _decode_count(path)
    h, w = frame.shape[:2]
    return SourceInfo(camera, path, "video", (w, h), n, fps if fps > 0 else None)


def probe_sources(paths: Mapping[str, Path], count_frames: bool = False, error=SourceError) -> dict[str, SourceInfo]:
    """Probe each camera's source (``{camera: path}`` from :func:`resolve_sources`): frame size,
    frame count, fps and, for image folders, each file's frame number. count_frames: decode
    every video once to count its frames instead of trusting the container's header."""
    infos: dict[str, SourceInfo] = {}
    numbered: dict[str, tuple[list[Path], np.ndarray]] = {}
    for cam, p in paths.items():
        p = Path(p)
        if p.is_dir():
            files = image_files(p)
            if not files:
                raise error(f"camera '{cam}': image folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
            nums = _file_numbers(cam, p, files, error)
            order = np.argsort(nums, kind="stable")
            numbered[cam] = ([files[k] for k in order], nums[order])
        elif p.suffix.lower() in VIDEO_EXTS:
            infos[cam] = _probe_video(cam, p, count_frames, error)
        elif not p.exists():
            raise error(f"camera '{cam}': source {p} does not exist")
        else:
            raise error(f"camera '{cam}': {p} is neither a video ({', '.join(VIDEO_EXTS)}) nor an image folder")
    if numbered:
        base = min(int(nums[0]) for _, nums in numbered.values())  # folders numbered from 1 start at frame 0
        for cam, (files, nums) in numbered.items():
            first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
            if first is None:
                raise error(f"camera '{cam}': cannot read image {files[0]}")
            h, w = first.shape[:2]
            ids = tuple(int(k) - base for k in nums)
            infos[cam] = SourceInfo(cam, Path(paths[cam]), "images", (w, h), ids[-1] + 1, None, tuple(files), ids)
    return {cam: infos[cam] for cam in paths}


def check_gaps(infos: Mapping[str, SourceInfo], wanted: Mapping[str, np.ndarray], allow: bool, error, hint: str = ""):
    """Frames each camera lacks among ``wanted[camera]`` (its own frame indices).

    Returns ``{camera: (k,) missing frames}`` for cameras with gaps when ``allow``; otherwise
    raises ``error`` naming the first camera and frame, the files around the gap and ``hint``
    (how to accept gaps explicitly)."""
    gaps = {}
    for cam, frames in wanted.items():
        miss = infos[cam].lacks(frames)
        if miss.size:
            gaps[cam] = miss
    if gaps and not allow:
        cam, miss = next(iter(gaps.items()))
        info, t = infos[cam], int(miss[0])
        ids = np.asarray(info.frame_ids)
        k = int(np.searchsorted(ids, t))
        around = [info.files[j].name for j in (k - 1, k) if 0 <= j < len(ids)]
        more = f" (and {miss.size - 1} more)" if miss.size > 1 else ""
        others = f"; cameras with gaps: {sorted(gaps)}" if len(gaps) > 1 else ""
        raise error(
            f"camera '{cam}': no image for frame {t}{more} in {info.path} (neighbouring files: {around}); frames are "
            f"matched across cameras by the number in their file names, so a missing file is a missing frame"
            f"{others}. Restore the file, leave that frame out of the range{hint}"
        )
    return gaps


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
class FrameReader:
    """Reads frames of one source by frame index as BGR uint8 (H, W, 3), videos in increasing
    index order (sequential decoding is exact, unlike seeking in many codecs)."""

    def __init__(self, info: SourceInfo, error=SourceError, hint: str = "", until_end: bool = False):
        self.info = info
        self.error = error
        self.hint = hint  # how to fix a video that ends early, added to that error
        self.until_end = until_end  # a video ending before the frame asked for: None instead of an error
        self.cap = None
        self.pos = 0  # next frame the capture will return
        if info.kind == "video":
            self.cap = cv2.VideoCapture(str(info.path))
            if not self.cap.isOpened():
                raise error(f"camera '{info.camera}': cannot open video {info.path}")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stopped(self, index: int) -> MvcapError:
        return self.error(
            f"camera '{self.info.camera}': decoding stopped at frame {index} of {self.info.path}, although it reports "
            f"{self.info.num_frames} frames (the header may overstate its length, or the file is damaged){self.hint}"
        )

    def read(self, index: int) -> np.ndarray | None:
        """Frame ``index`` (None: a video that ended before it, with ``until_end``)."""
        info = self.info
        if info.kind == "images":
            path = info.file_for(index)
            if path is None:
                raise self.error(f"camera '{info.camera}': no image for frame {index} in {info.path}")
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise self.error(f"camera '{info.camera}': cannot read image {path} (frame {index}; corrupt file?)")
        else:
            if index < self.pos:
                raise self.error(f"internal: camera '{info.camera}' asked for frame {index} after {self.pos}")
            while self.pos < index:
                if not self.cap.grab():
                    if self.until_end:
                        return None
                    raise self._stopped(self.pos)
                self.pos += 1
            ok, img = self.cap.read()
            if not ok or img is None:
                if self.until_end:
                    return None
                raise self._stopped(index)
            self.pos += 1
        h, w = img.shape[:2]
        if (w, h) != info.frame_size:
            raise self.error(
                f"camera '{info.camera}': frame {index} of {info.path} is {w}x{h}, its first frame is "
                f"{info.frame_size[0]}x{info.frame_size[1]}; all frames of a camera must share one size"
            )
        return img
