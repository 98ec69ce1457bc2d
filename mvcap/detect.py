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
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvcap.config import ConfigError
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
]

KEYPOINT_FORMAT = "mediapipe_pose_33"

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
        with warnings.catch_warnings():
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
                mask_arr = np.stack([np.round(m * 255).astype(np.uint8) for m in masks]) if cfg.masks else None
                s.write_detections(int(t), np.stack(kps), mask_arr, keypoint_format=KEYPOINT_FORMAT)
        finally:
            for d in detectors:
                d.close()
    return DetectSummary(todo, found, skipped, 1000.0 * seconds / max(images, 1))
