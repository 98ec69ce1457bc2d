"""2D keypoints and person masks per view with MediaPipe Pose (the optional ``detect`` extra).

``detect_session`` runs ``mediapipe==0.10.14``'s Pose solution (model_complexity=1, the only
model its wheel ships; tracking on; segmentation on) over every view of a session and stores,
per frame, 33 landmarks ``[x_px, y_px, confidence]`` in the stored (distorted) images plus a
soft person mask, through :meth:`mvcap.capture.Session.write_detections`.

* One ``Pose`` object per view, fed that view's frames in order (its tracker assumes a video).
* Pixels: MediaPipe's normalised ``x`` is ``u / W`` with ``u`` measured from the image's left
  *edge*; mvcap's pixel origin is the centre of the top-left pixel, hence ``x * W - 0.5``.
* Confidence: the landmark's ``visibility`` (times ``presence`` where MediaPipe sets it; the
  legacy solution in 0.10.14 does not). A view where no person is found gets confidence 0 and
  NaN coordinates.
* Resumable: frames already detected are skipped (``overwrite=True`` starts over). A resumed
  run restarts each view's tracker at the first frame it processes.

Landmark order and left/right pairs (the person's left) are in :data:`MEDIAPIPE_POSE_33` and
:data:`LEFT_RIGHT_PAIRS`; importing this module does not need MediaPipe.

Bring your own 2D keypoints (:func:`import_detections`, ``mvcap detect SESSION --from FORMAT
PATH``) instead of running MediaPipe:

* ``openpose``: OpenPose JSON, one folder per camera (``PATH/<camera>/`` or
  ``PATH/<camera>_json/``) of per-frame files ``{"people": [{"pose_keypoints_2d": [x, y, c,
  ...]}]}``; BODY_25 (or any layout of :mod:`mvcap.keypoints`, recognised by its size).
* ``rtmpose`` / ``pose2sim``: the same per-frame OpenPose-style JSON as Pose2Sim writes it from
  RTMPose: HALPE_26 (Pose2Sim's default), COCO_17 or COCO_133 (whole body), by size.
* ``easymocap``: EasyMocap annotations ``PATH/annots/<camera>/<frame>.json`` (or
  ``PATH/<camera>/``): ``{"width", "height", "annots": [{"personID", "keypoints": [[x, y, c],
  ...]}]}``, BODY_25 by default; keypoints on images of another size than the session's are
  rescaled (same aspect ratio).

Frames: a file's frame number is the last integer in its name; session frame ``t`` reads
number ``start + t * stride + offset[camera]`` of the ingest that made the session (from its
provenance), or ``first_frame + t * stride`` when ``first_frame`` is given, else the smallest
number found for that camera + ``t``. A missing file gives that view no keypoints for the frame.
Person: ``person`` (the index in ``people`` / EasyMocap's ``personID``), else the person with
the largest summed confidence. Pixels are taken as given (pixel centres at integers, as
OpenPose and MMPose write them); zero confidence means not found. No person masks: the rest
of the chain works without them (init's mask term is off by default; registration then uses
the keypoints). The detections group records the landmark set's name (``keypoint_format``),
which ``mvcap init`` uses to pick the landmark definitions on the mesh.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvcap.config import ConfigError
from mvcap.console import filtered_native_stderr
from mvcap.errors import MvcapError

__all__ = [
    "MEDIAPIPE_POSE_33",
    "KEYPOINT_FORMAT",
    "LEFT_RIGHT_PAIRS",
    "FLIP_INDEX",
    "DetectConfig",
    "DetectError",
    "DetectSummary",
    "require_mediapipe",
    "mediapipe_available",
    "PoseDetector",
    "detect_session",
    "FROM_FORMATS",
    "ImportSummary",
    "read_openpose_json",
    "read_easymocap_annots",
    "import_detections",
]

KEYPOINT_FORMAT = "mediapipe_pose_33"

log = logging.getLogger(__name__)

#: MediaPipe Pose's 33 landmarks in its output order ("left" = the person's left).
MEDIAPIPE_POSE_33: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip


def _pairs(names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for i, n in enumerate(names):
        for a, b in (("left_", "right_"), ("_left", "_right")):
            if a in n:
                out.append((i, names.index(n.replace(a, b))))
    return tuple(out)


#: (left index, right index) for every left/right landmark pair.
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = _pairs(MEDIAPIPE_POSE_33)
#: FLIP_INDEX[k]: the landmark that k becomes when left and right are exchanged.
FLIP_INDEX = np.arange(len(MEDIAPIPE_POSE_33))
for _l, _r in LEFT_RIGHT_PAIRS:
    FLIP_INDEX[_l], FLIP_INDEX[_r] = _r, _l
FLIP_INDEX.setflags(write=False)

_INSTALL_HINT = (
    "2D keypoint detection needs MediaPipe, the optional 'detect' extra. Install it with "
    "`pip install 'mvcap[detect]'` (or `pip install mediapipe==0.10.14`; newer MediaPipe "
    "versions ship no pose model). Without it, give an initial estimate yourself: "
    "`mvcap init SESSION --from-npz params.npz` (SMPL parameters: poses (T,72) or "
    "pose_rotvecs (T,24,3), trans (T,3), betas (10,))."
)


# MediaPipe / TF Lite log start-up chatter through glog; keep warnings and errors only. Set at
# import so it is in place before MediaPipe's first import in this process.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class DetectError(MvcapError):
    """Detection cannot run (e.g. MediaPipe is not installed); the message says how to fix it."""


@dataclass(frozen=True)
class DetectConfig:
    """MediaPipe Pose settings (TOML table ``[detect]`` of ``configs/init.toml``)."""

    model_complexity: int = 1  # the only model mediapipe 0.10.14 ships (0 and 2 download)
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    smooth_landmarks: bool = True
    masks: bool = True  # store MediaPipe's person segmentation masks
    smooth_segmentation: bool = True
    static_image_mode: bool = False  # detect every image on its own (no tracking between frames)

    def __post_init__(self):
        if self.model_complexity not in (0, 1, 2):
            raise ConfigError(f"model_complexity must be 0, 1 or 2, got {self.model_complexity}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class DetectSummary:
    """What a detection run did: frames (F,) processed now; found (F, V) bool person found;
    skipped: frames already detected; ms_per_image: mean MediaPipe time per view image."""

    frames: np.ndarray
    found: np.ndarray
    skipped: int
    ms_per_image: float

    @property
    def found_fraction(self) -> float:
        return float(self.found.mean()) if self.found.size else float("nan")

    def __str__(self) -> str:
        return (
            f"detected {len(self.frames)} frames ({self.skipped} already done), person found in "
            f"{100 * self.found_fraction:.0f}% of view images, {self.ms_per_image:.0f} ms per image"
        )


def mediapipe_available() -> bool:
    """True when MediaPipe's Pose solution can be imported (the 'detect' extra is installed)."""
    try:
        require_mediapipe()
    except DetectError:
        return False
    return True


def require_mediapipe():
    """Import MediaPipe's Pose solution, or raise :class:`DetectError` saying how to install it."""
    try:
        import mediapipe as mp
        from mediapipe.python.solutions import pose as mp_pose
    except ImportError as exc:
        raise DetectError(f"{_INSTALL_HINT} (import failed: {exc})") from exc
    version = getattr(mp, "__version__", "?")
    return mp_pose, version


class PoseDetector:
    """One tracked MediaPipe Pose stream (one camera). ``__call__(image (H,W,3) uint8 RGB)``
    -> (keypoints (33, 3) float32 ``[x_px, y_px, conf]``, mask (H, W) float32 in [0, 1] or None)."""

    def __init__(self, cfg: DetectConfig = DetectConfig()):
        mp_pose, _ = require_mediapipe()
        self.cfg = cfg
        with filtered_native_stderr():
            self._pose = mp_pose.Pose(
                static_image_mode=cfg.static_image_mode,
                model_complexity=cfg.model_complexity,
                smooth_landmarks=cfg.smooth_landmarks,
                enable_segmentation=cfg.masks,
                smooth_segmentation=cfg.smooth_segmentation,
                min_detection_confidence=cfg.min_detection_confidence,
                min_tracking_confidence=cfg.min_tracking_confidence,
            )

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        H, W = image.shape[:2]
        # TF Lite / absl write INFO and W0000 lines straight to file descriptor 2 on the first images
        with warnings.catch_warnings(), filtered_native_stderr():
            # protobuf 4 deprecation noise from inside mediapipe 0.10.14, once per image
            warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
            res = self._pose.process(np.ascontiguousarray(image))
        kp = np.full((len(MEDIAPIPE_POSE_33), 3), np.nan, np.float32)
        kp[:, 2] = 0.0
        if res.pose_landmarks is not None:
            for i, lm in enumerate(res.pose_landmarks.landmark):
                conf = lm.visibility if lm.HasField("visibility") else 1.0
                if lm.HasField("presence"):
                    conf *= lm.presence
                kp[i] = (lm.x * W - 0.5, lm.y * H - 0.5, np.clip(conf, 0.0, 1.0))
        mask = None
        if self.cfg.masks:
            seg = getattr(res, "segmentation_mask", None)
            mask = np.zeros((H, W), np.float32) if seg is None else np.clip(np.asarray(seg, np.float32), 0, 1)
        return kp, mask

    def close(self) -> None:
        self._pose.close()

    def __enter__(self) -> PoseDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def detect_session(
    path: str | Path,
    cfg: DetectConfig = DetectConfig(),
    frames=None,
    overwrite: bool = False,
    progress: bool = True,
) -> DetectSummary:
    """Detect 2D keypoints (and person masks) in every view of a session and store them.

    path: session ``.h5``; frames: indices to process (default all written frames);
    ``overwrite`` deletes stored detections first, else frames already detected are skipped.
    """
    from tqdm import tqdm

    from mvcap.capture import Session, SessionError

    require_mediapipe()  # fail before opening the file for writing
    with Session.open(path, mode="a") as s:
        if overwrite:
            s.delete_detections()
        elif s.has_detections and s.keypoint_format != KEYPOINT_FORMAT:
            raise SessionError(
                f"{path} already holds {s.keypoint_format!r} detections; pass overwrite=True "
                "(CLI: --overwrite) to replace them with MediaPipe's"
            )
        written = s.frames_written
        todo = np.flatnonzero(written) if frames is None else np.asarray(list(frames), np.int64)
        missing = todo[~written[todo]] if todo.size else todo
        if missing.size:
            raise SessionError(f"frames {missing[:10].tolist()} of {path} have no images; ingest them first")
        done = s.detections_written
        skipped = int(done[todo].sum()) if todo.size else 0
        todo = todo[~done[todo]] if todo.size else todo
        V = s.num_views
        detectors = [PoseDetector(cfg) for _ in range(V)]
        found = np.zeros((len(todo), V), bool)
        seconds, images = 0.0, 0
        try:
            for i, t in enumerate(tqdm(todo, desc="detect", unit="frame", disable=not progress)):
                imgs = s.read_frame(int(t))
                kps, masks = [], []
                for v in range(V):
                    t0 = time.perf_counter()
                    kp, mask = detectors[v](imgs[v])
                    seconds += time.perf_counter() - t0
                    images += 1
                    kps.append(kp)
                    masks.append(mask)
                    found[i, v] = bool(kp[:, 2].max() > 0)
                mask_arr = [np.round(m * 255).astype(np.uint8) for m in masks] if cfg.masks else None  # per-view sizes
                s.write_detections(int(t), np.stack(kps), mask_arr, keypoint_format=KEYPOINT_FORMAT)
                log.debug("frame %d: person found in %d/%d views", t, found[i].sum(), V)
        finally:
            for d in detectors:
                d.close()
    return DetectSummary(todo, found, skipped, 1000.0 * seconds / max(images, 1))


# ------------------------------------------------------------------------------------------
# bring your own 2D keypoints
# ------------------------------------------------------------------------------------------
#: readers of :func:`import_detections`: format -> layout family
FROM_FORMATS: tuple[str, ...] = ("openpose", "rtmpose", "pose2sim", "easymocap")


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_detections` stored: frames (F,) session frames; found (F, V) bool a
    person was read; keypoint_format: the landmark set; files: JSON files read; missing:
    (frame, camera) pairs without a file."""

    frames: np.ndarray
    found: np.ndarray
    keypoint_format: str
    files: int
    missing: tuple[tuple[int, str], ...]

    def __str__(self) -> str:
        return (
            f"imported {self.keypoint_format} keypoints for {len(self.frames)} frames from {self.files} files, "
            f"person found in {100 * float(self.found.mean()) if self.found.size else 0:.0f}% of view images"
            + (f", {len(self.missing)} view images without a file" if self.missing else "")
        )


def _persons(raw, what: str, where: Path) -> np.ndarray:
    """A flat [x, y, c, ...] list or a [[x, y, c], ...] list -> (K, 3) float32."""
    a = np.asarray(raw, np.float32)
    if a.ndim == 1 and a.size % 3 == 0:
        a = a.reshape(-1, 3)
    if a.ndim != 2 or a.shape[1] not in (2, 3) or a.shape[0] == 0:
        raise DetectError(f"{where}: {what} must hold [x, y, confidence] per keypoint, got shape {a.shape}")
    if a.shape[1] == 2:
        a = np.concatenate([a, np.ones((len(a), 1), np.float32)], 1)
    return a


def read_openpose_json(path: str | Path) -> list[np.ndarray]:
    """The people of one OpenPose / Pose2Sim JSON file: a list of (K, 3) ``[x, y, conf]``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DetectError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise DetectError(f"{path}: not an OpenPose JSON file (no 'people' list)")
    out = []
    for i, person in enumerate(data["people"]):
        kp = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if kp is None:
            raise DetectError(f"{path}: person {i} has no 'pose_keypoints_2d'")
        if len(kp):
            out.append(_persons(kp, f"person {i}'s pose_keypoints_2d", path))
    return out


def read_easymocap_annots(path: str | Path) -> tuple[dict[int, np.ndarray], tuple[int, int] | None]:
    """One EasyMocap annotation file: ({personID: (K, 3) [x, y, conf]}, (width, height) or None)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DetectError(f"{path}: not a readable JSON file ({exc})") from exc
    annots = data.get("annots") if isinstance(data, dict) else data
    if not isinstance(annots, list):
        raise DetectError(f"{path}: not an EasyMocap annotation file (no 'annots' list)")
    out = {}
    for i, a in enumerate(annots):
        if not isinstance(a, dict) or "keypoints" not in a:
            raise DetectError(f"{path}: annotation {i} has no 'keypoints'")
        out[int(a.get("personID", a.get("id", i)))] = _persons(a["keypoints"], f"annotation {i}'s keypoints", path)
    size = None
    if isinstance(data, dict) and data.get("width") and data.get("height"):
        size = (int(data["width"]), int(data["height"]))
    return out, size


_NUMBER = re.compile(r"(\d+)")


def _numbered_files(folder: Path) -> dict[int, Path]:
    """{frame number: file} for the JSON files of a folder (number = last integer in the name)."""
    out: dict[int, Path] = {}
    for f in sorted(folder.glob("*.json")):
        nums = _NUMBER.findall(f.stem)
        if not nums:
            continue
        n = int(nums[-1])
        if n in out:
            raise DetectError(f"{folder}: files {out[n].name} and {f.name} both hold frame {n}")
        out[n] = f
    return out


def _camera_folder(root: Path, cam: str, fmt: str) -> Path:
    bases = [root / "annots", root] if fmt == "easymocap" else [root]
    for base in bases:
        for name in (cam, f"{cam}_json"):
            if (base / name).is_dir():
                return base / name
    found = sorted(p.name for b in bases if b.is_dir() for p in b.iterdir() if p.is_dir())
    layout = "annots/<camera>/" if fmt == "easymocap" else "<camera>/ or <camera>_json/"
    raise DetectError(f"{root}: no keypoint folder for camera {cam!r} (expected {layout}); folders found: {found}")


def import_detections(
    path: str | Path,
    fmt: str,
    source: str | Path,
    keypoint_format: str | None = None,
    frames=None,
    first_frame: int | None = None,
    person: int | None = None,
    overwrite: bool = False,
) -> ImportSummary:
    """Store 2D keypoints made by another detector (see the module docstring) as the session's
    detections, without masks.

    fmt: one of :data:`FROM_FORMATS`; source: the folder holding one sub-folder per camera;
    keypoint_format: the landmark set (:mod:`mvcap.keypoints`, default: recognised from the
    number of keypoints); frames: session frames to fill (default all); ``overwrite`` replaces
    stored detections of another landmark set (e.g. MediaPipe's).
    """
    from mvcap.capture import Session
    from mvcap.keypoints import keypoint_set, keypoint_set_for_count

    fmt = str(fmt).lower()
    if fmt not in FROM_FORMATS:
        raise DetectError(f"unknown keypoint file format {fmt!r}; choose from {', '.join(FROM_FORMATS)}")
    source = Path(source)
    if not source.is_dir():
        raise DetectError(f"{source}: not a folder (expected one folder of JSON files per camera)")
    kset = None
    if keypoint_format is not None:
        try:
            kset = keypoint_set(keypoint_format)
        except ValueError as exc:
            raise DetectError(str(exc)) from exc
    with Session.open(path, mode="a") as s:
        T, cams = s.num_frames, list(s.view_names)
        sizes = s.image_sizes
        todo = np.arange(T) if frames is None else np.unique(np.asarray(list(frames), np.int64))
        if todo.size and (todo.min() < 0 or todo.max() >= T):
            raise DetectError(f"frames {todo.min()}..{todo.max()} outside the session's 0..{T - 1}")
        ing = (s.provenance.get("ingest") or {}).get("config") or {}
        stride = int(ing.get("stride", 1) or 1)
        files = {c: _numbered_files(_camera_folder(source, c, fmt)) for c in cams}
        for c, fl in files.items():
            if not fl:
                raise DetectError(f"{_camera_folder(source, c, fmt)}: no JSON files with a frame number in the name")

        def number(c: str, t: int) -> int:
            if first_frame is not None:
                return int(first_frame) + t * stride
            if ing:
                return int(ing.get("start", 0) or 0) + t * stride + int((ing.get("offsets") or {}).get(c, 0))
            return min(files[c]) + t

        K = None if kset is None else len(kset.names)
        found = np.zeros((len(todo), len(cams)), bool)
        missing: list[tuple[int, str]] = []
        nread = 0
        rows = []
        for i, t in enumerate(todo):
            kps = []
            for v, c in enumerate(cams):
                f = files[c].get(number(c, int(t)))
                kp = None
                if f is None:
                    missing.append((int(t), c))
                else:
                    nread += 1
                    if fmt == "easymocap":
                        people, size = read_easymocap_annots(f)
                        people = {pid: _rescale(kp, size, sizes[c], f) for pid, kp in people.items()}
                        kp = people.get(person) if person is not None else _best(list(people.values()))
                    else:
                        plist = read_openpose_json(f)
                        kp = (plist[person] if person < len(plist) else None) if person is not None else _best(plist)
                if kp is not None:
                    if K is None:
                        try:
                            kset = keypoint_set_for_count(len(kp))
                        except ValueError as exc:
                            raise DetectError(f"{f}: {exc} (--keypoints SET)") from exc
                        K = len(kset.names)
                    if len(kp) != K:
                        raise DetectError(f"{f}: {len(kp)} keypoints per person, but the layout {kset.name} has {K}")
                    _check_inside(kp, sizes[c], f)
                    found[i, v] = bool((kp[:, 2] > 0).any())
                kps.append(kp)
            rows.append(kps)
        if K is None:
            raise DetectError(f"{source}: no person in any of the {nread} files read for frames {_span(todo)}")
        if s.has_detections and s.keypoint_format != kset.name:
            if not overwrite:
                raise DetectError(
                    f"{path} already holds {s.keypoint_format!r} detections; pass overwrite=True (CLI: --overwrite) "
                    f"to replace them with these {kset.name} keypoints"
                )
            s.delete_detections()
        elif overwrite:
            s.delete_detections()
        for t, kps in zip(todo, rows, strict=True):
            arr = np.full((len(cams), K, 3), np.nan, np.float32)
            arr[..., 2] = 0.0
            for v, kp in enumerate(kps):
                if kp is not None:
                    ok = kp[:, 2] > 0
                    arr[v, ok] = kp[ok]
            s.write_detections(int(t), arr, None, keypoint_format=kset.name)
    return ImportSummary(todo, found, kset.name, nread, tuple(missing))


def _best(people: list[np.ndarray]) -> np.ndarray | None:
    """The person with the largest summed confidence (None when there is none)."""
    if not people:
        return None
    return people[int(np.argmax([np.nansum(p[:, 2]) for p in people]))]


def _rescale(kp: np.ndarray, size, target, where: Path) -> np.ndarray:
    """Keypoints on a (w, h) image -> the session view's (W, H) pixels (same aspect ratio)."""
    if size is None or tuple(size) == tuple(target):
        return kp
    sx, sy = target[0] / size[0], target[1] / size[1]
    if abs(sx / sy - 1) > 0.01:
        raise DetectError(
            f"{where}: keypoints are on {size[0]}x{size[1]} images but the session's view is "
            f"{target[0]}x{target[1]} (another aspect ratio); detect on the ingested frames"
        )
    out = kp.copy()
    # pixel centres at integers: scale about the top-left image corner (-0.5, -0.5)
    out[:, 0] = (kp[:, 0] + 0.5) * sx - 0.5
    out[:, 1] = (kp[:, 1] + 0.5) * sy - 0.5
    return out


def _check_inside(kp: np.ndarray, size, where: Path) -> None:
    W, H = size
    ok = kp[:, 2] > 0
    if ok.any() and (np.abs(kp[ok, 0] - W / 2).max() > W or np.abs(kp[ok, 1] - H / 2).max() > H):
        raise DetectError(
            f"{where}: keypoints lie far outside the session's {W}x{H} images; were they detected on "
            "images of another size (or another camera)?"
        )


def _span(idx: np.ndarray) -> str:
    return "none" if idx.size == 0 else f"{int(idx[0])}..{int(idx[-1])}"
