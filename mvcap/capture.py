"""The HDF5 session file: rig, frames, subject, initial estimates, results, ground truth.

One capture session is one ``.h5`` file; the layout (group / dataset / attribute names,
dtypes, shapes) is documented in ``docs/session-format.md`` and summarised here::

    /                      attrs: format="mvcap-session", format_version=2, created_by,
                                  created_at, session_id, provenance (JSON), complete (bool),
                                  fps, num_frames
    /rig/                  names (V,) utf-8, K (V,3,3), dist (V,5), R_world2cam (V,3,3),
                           t_world2cam (V,3), image_size (V,2) int64 (width, height);
                           attrs world_up ("+y", "+z", ...), world_units ("m")  (optional)
    /rig_original/         the rig as created, once ``mvcap rig refine --apply`` replaced /rig (optional)
    /frames/<view>/        images (T,H,W,3) uint8 (one frame per chunk, gzip),
                           timestamps (T,) float64 s, written (T,) bool
    /subject/              betas (10,), texture?, vertex_colors?, displacement_net? (uint8 bytes of
                           the adapted network's weights file); attrs name, gender, meta
    /init/                 pose_rotvecs (T,24,3), betas (T,10), transl (T,3), valid (T,)
    /detections/           keypoints (T,V,K,3) float32 [x,y,conf] px, written (T,), masks/<view>
                           (T,H,W) uint8; attrs keypoint_format            (optional)
    /ground_truth/         pose_rotvecs, betas, transl, extra/<name>   (optional)
    <name>.results/<run>.h5  one results run per side file (root: pose_rotvecs, betas, transl,
                           done, residual_px (T,V), iterations, seconds; attrs config (JSON),
                           created_at, session_id); version-1 sessions kept runs in /results/<run>/

Crash safety: data is written in place; the root attribute ``complete`` stays False until
:meth:`Session.mark_complete`. An incomplete file can be reopened with ``mode="a"`` to
resume (``frames_written`` / ``ResultsWriter.done_frames()`` say what is already there).
Results writers flush after every frame, so a crash loses at most the frame in flight.

Write errors are errors: every write flushes and checks (also the errors h5py can only
report while discarding a dataset handle), a frame is marked written / done only after its
data was flushed, and a failed write raises :class:`SessionError` and closes the file.
Results go to their own side file per run (allocated in full when the run starts), so a
refinement that hits a full disk cannot damage the session's frames, init or ground truth.
The file is written with HDF5's default (oldest compatible) format on purpose: newer
superblocks record "open for writing" flags that make a crashed file unopenable without
the ``h5clear`` tool.

Every failure to read a file is reported as :class:`SessionError` with a message that
names the file and the problem, never as a raw h5py traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import json
import logging
import os
import platform
import re
import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mvcap.body import NUM_JOINTS, BodyParams
from mvcap.cameras import Rig, RigError
from mvcap.errors import MvcapError
from mvcap.subject import NUM_BETAS, Subject, SubjectError

__all__ = [
    "Session",
    "SessionError",
    "WORLD_UP_AXES",
    "normalize_up",
    "BodyParams",
    "Results",
    "ResultsWriter",
    "FORMAT",
    "FORMAT_VERSION",
    "NUM_JOINTS",
]

FORMAT = "mvcap-session"
FORMAT_VERSION = 2  # 2: results in side files, gzip frames, session_id (version 1 is still read)
RESULTS_FORMAT = "mvcap-results"
FRAME_COMPRESSION = "gzip"  # every HDF5 build has it (LZF is h5py-only); docs/session-format.md
_GZIP_LEVEL = 1  # smallest and fastest of levels 1/4/6 on the demo capture (benchmarks/session_storage.py)

_STR = h5py.string_dtype("utf-8")
#: Signed world axes a session may record as its up direction (``Session.world_up``).
WORLD_UP_AXES = ("+x", "-x", "+y", "-y", "+z", "-z")
_BODY_FIELDS = ("pose_rotvecs", "betas", "transl")


class SessionError(MvcapError):
    """A session file cannot be created, opened, read or written; the message says why."""


log = logging.getLogger(__name__)


def _filter(compression: str | None) -> dict:
    """h5py create_dataset keywords for a frame / mask compression name."""
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": _GZIP_LEVEL}
    return {} if compression is None else {"compression": compression}


def results_dir(session_path: str | os.PathLike) -> Path:
    """The folder holding a session's results side files: ``take1.h5`` -> ``take1.h5.results``."""
    path = Path(session_path)
    return path.with_name(path.name + ".results")


# ------------------------------------------------------------------------------------------
# write errors
# ------------------------------------------------------------------------------------------
def _io_reason(exc: BaseException) -> str:
    """One line saying why a write failed (h5py's messages span lines and carry a buffer dump)."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        m = re.search(r"errno = (\d+)", str(exc))
        code = int(m.group(1)) if m else None
    if code == errno.ENOSPC:
        return "the disk is full (No space left on device)"
    if code == errno.EDQUOT:
        return "the disk quota is exceeded"
    if code is not None:
        return f"{os.strerror(code)} (errno {code})"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@contextlib.contextmanager
def _collect_unraisable(into: list):
    """Collect the HDF5 errors h5py can only report as "Exception ignored" (a dataset handle
    discarded with unwritten data: the write failed but nothing raised) into ``into``."""
    old = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, (OSError, RuntimeError)) and "h5py" in repr(unraisable.object):
            into.append(unraisable.exc_value)
        else:
            old(unraisable)

    sys.unraisablehook = hook
    try:
        yield into
    finally:
        sys.unraisablehook = old


def _close_quietly(f: h5py.File | None) -> None:
    """Close a file after a failed write; its errors were already reported."""
    if f is None:
        return
    with _collect_unraisable([]), contextlib.suppress(Exception):
        if f.id.valid:
            f.close()


_ABANDONED: list = []
_FREE_SPACE_MARGIN = 1 << 20  # bytes kept free beyond a write's own size (HDF5 metadata, chunk index)


def _abandon(f: h5py.File) -> None:
    """Stop using a file whose write failed. A file that can still be flushed (the failure was
    passing) is closed. One that cannot is never touched again: after a failed flush HDF5
    cannot close it, and closing or flushing it again crashed the process; the handle is
    kept referenced so that h5py does not try either while the program runs."""
    errors: list = []
    with _collect_unraisable(errors):
        try:
            f.flush()
        except (OSError, RuntimeError) as exc:
            errors.append(exc)
    if errors:
        _detach_and_close(f)
    else:
        _close_quietly(f)


def _detach_and_close(f: h5py.File) -> None:
    """Close a file HDF5 can no longer write: its descriptor is pointed at /dev/null first,
    so the flush that closing does cannot fail (nor change the file on disk, which keeps
    what the last successful flush wrote). Without a descriptor to redirect, keep the handle
    referenced so h5py never tries to close it while the program runs."""
    try:
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_RDWR)
    except Exception:  # noqa: BLE001 - any driver without a plain descriptor
        _ABANDONED.append(f)
        return
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
    _close_quietly(f)


def _write_error(failure: str, advice: str) -> SessionError:
    """SessionError for a failed write; ``.failure`` holds the first part alone (for callers
    that give their own advice, e.g. ingest)."""
    err = SessionError(f"{failure}. What was written before is kept; {advice}")
    err.failure = failure
    return err


def _check_space(path: Path, need_bytes: int, what: str) -> None:
    """Refuse a write the disk cannot hold, before HDF5 starts it: HDF5 cannot recover from a
    write that fails half-way (see :func:`_abandon`)."""
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        return  # cannot tell: the guarded write still reports a failure
    if free < need_bytes + _FREE_SPACE_MARGIN:
        raise _write_error(
            f"cannot write {what} to {path}: the disk is full ({free / 1e6:.1f} MB free, this write needs up to "
            f"{(need_bytes + _FREE_SPACE_MARGIN) / 1e6:.1f} MB)",
            "free disk space and rerun the command to resume",
        )


@contextlib.contextmanager
def _guarded_write(f: h5py.File, path: Path, what: str, on_fail=None, need_bytes: int = 0):
    """Run the writes of the block, then flush ``f``; any I/O error (raised, or swallowed by
    h5py while discarding a handle) closes ``f`` (HDF5's state after a failed write is
    undefined) and becomes a one-line SessionError. ``on_fail()`` runs before raising.

    Yields ``commit()``: flush now and raise if any write so far failed; call it before
    setting a "written" / "valid" / "done" flag so a flag never outlives its data.
    need_bytes: an upper bound of the bytes the block adds to the file (checked first)."""
    _check_space(path, need_bytes, what)
    errors: list = []

    def commit() -> None:
        f.flush()
        if errors:
            raise errors[0]

    with _collect_unraisable(errors):
        try:
            yield commit
            commit()
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, SessionError):
                raise
            errors.insert(0, exc)
    if errors:
        _abandon(f)
        if on_fail is not None:
            on_fail()
        raise _write_error(
            f"cannot write {what} to {path}: {_io_reason(errors[0])}",
            "free disk space (or fix the file's permissions) and rerun the command to resume",
        ) from errors[0]


def _mvcap_version() -> str:
    try:
        from importlib.metadata import version

        return version("mvcap")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def normalize_up(up: str) -> str:
    """``"z"``, ``"+Z"``, ``"-y"``, ... -> one of :data:`WORLD_UP_AXES`; a clear error otherwise."""
    u = str(up).strip().lower()
    u = u if u[:1] in "+-" else "+" + u
    if u not in WORLD_UP_AXES:
        raise SessionError(f"up axis must be one of {', '.join(WORLD_UP_AXES)} (or x, y, z), got {up!r}")
    return u


def _np(x, dtype=None) -> np.ndarray:
    """numpy view of an array-like or torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


def _json_default(o):
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _to_json(obj, what: str) -> str:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    try:
        return json.dumps(obj if obj is not None else {}, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise SessionError(f"{what} must be JSON-serialisable ({exc})") from exc


@dataclass
class Results:
    """One results run read back from a session.

    params: BodyParams over all T frames (NaN where not done); done (T,) bool;
    residual_px (T, V) float32 mean reprojection residual per view (NaN when unknown);
    iterations (T,) int32; seconds (T,) float32 wall time per frame; config: the run's
    config dict; name: the run name; view_names: the V views of residual_px.
    """

    name: str
    params: BodyParams
    done: np.ndarray
    residual_px: np.ndarray
    iterations: np.ndarray
    seconds: np.ndarray
    config: dict
    view_names: tuple[str, ...]
    created_at: str = ""

    @property
    def pose_rotvecs(self) -> np.ndarray:
        return self.params.pose_rotvecs

    @property
    def betas(self) -> np.ndarray:
        return self.params.betas

    @property
    def transl(self) -> np.ndarray:
        return self.params.transl


# ------------------------------------------------------------------------------------------
# the session
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _reading(path, what: str):
    """Translate low-level h5py failures while reading into SessionError."""
    try:
        yield
    except SessionError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, RigError, SubjectError) as exc:
        raise SessionError(
            f"session file {path}: cannot read {what} ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt"
        ) from exc


def _frames_to_index(frames, T: int, what: str = "frames") -> np.ndarray:
    """int / slice / range / sequence / bool mask -> int64 index array, bounds-checked."""
    if frames is None:
        return np.arange(T)
    if isinstance(frames, slice):
        return np.arange(T)[frames]
    idx = _np(frames)
    if idx.dtype == bool:
        if idx.shape != (T,):
            raise SessionError(f"{what}: a boolean mask must have shape ({T},), got {idx.shape}")
        return np.flatnonzero(idx)
    idx = np.atleast_1d(idx).astype(np.int64)
    if idx.ndim != 1:
        raise SessionError(f"{what}: frame indices must be 1-D, got shape {idx.shape}")
    bad = idx[(idx < -T) | (idx >= T)]
    if bad.size:
        raise SessionError(
            f"{what}: frame index {int(bad[0])} out of range for a session of {T} frames"
        )
    return np.where(idx < 0, idx + T, idx)


def _read_rows(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """Read rows ``idx`` (any order, repeats allowed) of dataset ``ds``."""
    if idx.size == 0:
        return np.zeros((0,) + ds.shape[1:], ds.dtype)
    if idx.size > 1 and np.all(np.diff(idx) == 1):
        return ds[int(idx[0]) : int(idx[-1]) + 1]
    uniq, inverse = np.unique(idx, return_inverse=True)
    return ds[uniq][inverse]


def _write_rows(ds: h5py.Dataset, idx: np.ndarray, values: np.ndarray) -> None:
    if idx.size == 0:
        return
    if idx.size > 1 and np.all(np.diff(idx) == 1):
        ds[int(idx[0]) : int(idx[-1]) + 1] = values
        return
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    if np.any(np.diff(sidx) == 0):
        raise SessionError("repeated frame indices in one write")
    ds[sidx] = values[order]


class Session:
    """An open session file. Use :meth:`create` or :meth:`open`, ideally as a context manager::

    with Session.create("take1.h5", rig, num_frames=300) as s:
        s.write_frame(0, images)          # (V, H, W, 3) uint8
        ...
        s.mark_complete()

    with Session.open("take1.h5") as s:
        imgs = s.read_frame(0)            # (V, H, W, 3) uint8
    """

    def __init__(self, h5: h5py.File, path: Path, mode: str):
        # use Session.create / Session.open
        self._f = h5
        self._path = Path(path)
        self._mode = mode
        self._runs: dict[str, h5py.File] = {}  # open results side files by run name
        with _reading(self._path, "the rig"):
            g = self._f["rig"]
            self._rig = Rig.from_arrays(
                g["names"].asstr()[()].tolist(),
                g["K"][()],
                g["dist"][()],
                g["R_world2cam"][()],
                g["t_world2cam"][()],
                g["image_size"][()],
            )
            self._T = int(self._f.attrs["num_frames"])
            self._fps = float(self._f.attrs["fps"])
            for v in self._rig.names:
                self._f["frames"][v]["images"]  # noqa: B018 (existence check)

    # ---------------------------------------------------------------- construction --------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        rig: Rig,
        num_frames: int,
        image_size: tuple[int, int] | None = None,
        fps: float = 30.0,
        provenance: dict | None = None,
        overwrite: bool = False,
        compression: str | None = FRAME_COMPRESSION,
    ) -> Session:
        """Create a new session file sized for ``num_frames`` frames of every rig view.

        image_size: ``(width, height)`` to store every view at; ``None`` stores each view at
        its own rig image size. If it differs from the rig's sizes, the stored rig is
        ``rig.with_image_size(image_size)`` so calibration always matches the stored pixels.
        compression: ``"gzip"`` (default: level 1, readable by every HDF5 tool), ``"lzf"``
        (h5py-only: h5dump, HDFView and MATLAB read such frames as empty) or ``None``.
        Refuses to replace an existing file unless ``overwrite=True`` (which also discards the
        old file's results folder).
        """
        path = Path(path)
        if not isinstance(rig, Rig):
            raise SessionError(f"rig must be an mvcap.cameras.Rig, got {type(rig).__name__}")
        if int(num_frames) < 1:
            raise SessionError(f"num_frames must be >= 1, got {num_frames}")
        num_frames = int(num_frames)
        if not (float(fps) > 0):
            raise SessionError(f"fps must be positive, got {fps}")
        if compression not in ("lzf", "gzip", None):
            raise SessionError(f"compression must be 'lzf', 'gzip' or None, got {compression!r}")
        for name in rig.names:
            if "/" in name or name in (".", "..") or not name:
                raise SessionError(
                    f"camera name {name!r} cannot be used as an HDF5 group name; rename it"
                )
        if image_size is not None:
            image_size = tuple(int(s) for s in image_size)
            if len(image_size) != 2 or min(image_size) <= 0:
                raise SessionError(f"image_size must be (width, height), got {image_size}")
            if any(tuple(c.image_size) != image_size for c in rig):
                rig = rig.with_image_size(image_size)
        prov_json = _to_json(provenance, "provenance")
        if path.exists():
            if not overwrite:
                raise SessionError(
                    f"session file {path} already exists; pass overwrite=True (CLI: --overwrite) "
                    "to replace it, or Session.open(path, mode='a') to add to it"
                )
            if path.is_dir():
                raise SessionError(f"{path} is a directory")
            path.unlink()
        if results_dir(path).is_dir():  # results of a file that was replaced or deleted
            shutil.rmtree(results_dir(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = h5py.File(path, "w")
        except OSError as exc:
            raise SessionError(f"cannot create session file {path}: {_io_reason(exc)}") from exc
        # a new file holds nothing yet: on a failed write remove it rather than leave a broken one
        try:
            with _guarded_write(f, path, "the new session's layout", on_fail=lambda: path.unlink(missing_ok=True)):
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = np.int64(FORMAT_VERSION)
                f.attrs["created_by"] = (
                    f"mvcap {_mvcap_version()} (python {platform.python_version()}, "
                    f"h5py {h5py.__version__})"
                )
                f.attrs["created_at"] = _now()
                f.attrs["session_id"] = uuid.uuid4().hex  # ties results side files to this file
                f.attrs["provenance"] = prov_json
                f.attrs["complete"] = False
                f.attrs["fps"] = np.float64(fps)
                f.attrs["num_frames"] = np.int64(num_frames)

                arrays = rig.to_arrays()
                g = f.create_group("rig")
                g.create_dataset(
                    "names", data=np.array([str(n) for n in arrays["names"]], dtype=object), dtype=_STR
                )
                for k in ("K", "dist", "R_world2cam", "t_world2cam"):
                    g.create_dataset(k, data=np.asarray(arrays[k], np.float64))
                g.create_dataset("image_size", data=np.asarray(arrays["image_size"], np.int64))

                fr = f.create_group("frames")
                fr.attrs["fps"] = np.float64(fps)
                for cam in rig:
                    w, h = cam.image_size
                    vg = fr.create_group(cam.name)
                    vg.create_dataset(
                        "images", shape=(num_frames, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3), fillvalue=0,
                        **_filter(compression),
                    )  # fmt: skip
                    vg.create_dataset(
                        "timestamps", shape=(num_frames,), dtype=np.float64, fillvalue=np.nan
                    )
                    vg.create_dataset("written", shape=(num_frames,), dtype=bool, fillvalue=False)

                ig = f.create_group("init")
                _create_body_datasets(ig, num_frames)
                ig.create_dataset("valid", shape=(num_frames,), dtype=bool, fillvalue=False)
                f.create_group("results")  # empty: runs live in side files (results_dir)
        except BaseException:
            _close_quietly(f)  # e.g. interrupted: never leave the handle open
            raise
        return cls(f, path, "a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> Session:
        """Open an existing session: ``mode="r"`` read-only, ``"a"`` read/write (resume)."""
        path = Path(path)
        if mode == "r+":
            mode = "a"
        if mode not in ("r", "a"):
            raise SessionError(
                f"mode must be 'r' or 'a', got {mode!r} (use Session.create for new files)"
            )
        if not path.exists():
            raise SessionError(f"session file {path} does not exist")
        if path.is_dir():
            raise SessionError(f"session path {path} is a directory, expected an .h5 file")
        if mode == "a":
            # Check the file read-only first: opening anything for writing (an empty file, another
            # program's HDF5 file) lets HDF5 write into it before we could refuse it.
            cls.open(path, "r").close()
        try:
            f = h5py.File(path, "r" if mode == "r" else "r+")
        except OSError as exc:
            msg = str(exc)
            low = msg.lower()
            if isinstance(exc, PermissionError) or "permission denied" in low or "not permitted" in low:
                access = "reading" if mode == "r" else "writing"
                raise SessionError(
                    f"no permission to open session file {path} for {access} (it is protected or owned "
                    f"by another user, not corrupt); "
                    + ("make it writable (chmod u+w) or work on a copy" if mode == "a" else "make it readable")
                ) from None
            if path.stat().st_size == 0:
                raise SessionError(
                    f"session file {path} is empty (0 bytes), not an mvcap session; it was left unchanged. "
                    "Create the session with `mvcap ingest` (or delete the empty file)"
                ) from None
            if "truncated" in low:
                raise SessionError(
                    f"session file {path} is truncated ({path.stat().st_size} bytes on disk, the "
                    f"file says it should be longer); it may be an interrupted copy or download, "
                    f"or the disk filled "
                    f"while writing. Copy it again or recover it from the source. h5py said: {msg}"
                ) from exc
            if "unable to lock" in low or "file locking" in low or "already open" in low:
                raise SessionError(
                    f"session file {path} is open for writing in another process (HDF5 file lock); "
                    f"wait for it to finish, or read a copy of the file. h5py said: {msg}"
                ) from exc
            if "signature" in low and path.stat().st_size > 0 and not h5py.is_hdf5(path):
                raise SessionError(
                    f"{path} is not an HDF5 file, so not an mvcap session ({msg})"
                ) from exc
            raise SessionError(
                f"cannot open session file {path}: it is not a valid HDF5 file or is truncated/"
                f"corrupt (e.g. an interrupted copy or download; size {path.stat().st_size} "
                f"bytes). h5py said: {msg}"
            ) from exc
        try:
            with _reading(path, "the format attributes"):
                fmt = f.attrs.get("format")
                if isinstance(fmt, bytes):
                    fmt = fmt.decode()
                if fmt != FORMAT:
                    raise SessionError(
                        f"{path} is an HDF5 file but not an mvcap session (attribute 'format' "
                        f"is {fmt!r}, "
                        f"expected {FORMAT!r})"
                    )
                version = f.attrs.get("format_version")
                if version is None:
                    raise SessionError(
                        f"session file {path} has no 'format_version' attribute; it is malformed"
                    )
                version = int(version)
                if version > FORMAT_VERSION:
                    raise SessionError(
                        f"session file {path} has format version {version}, but this mvcap "
                        f"({_mvcap_version()}) reads versions up to {FORMAT_VERSION}; "
                        "upgrade mvcap to read it"
                    )
                if version < 1:
                    raise SessionError(f"session file {path} has invalid format version {version}")
            return cls(f, path, mode)
        except BaseException:
            f.close()
            raise

    # ---------------------------------------------------------------- lifecycle -----------
    def close(self) -> None:
        """Flush and close (the session and its open results files). Safe to call twice.
        SessionError if data could not be written out."""
        files = [(self._results_path(name), f) for name, f in self._runs.items()]
        files.append((self._path, self._f))
        self._runs, self._f = {}, None
        failed = []
        for path, f in files:
            if f is None or not f.id.valid:
                continue
            errors: list = []
            with _collect_unraisable(errors):
                try:
                    if f.mode == "r+":
                        f.flush()
                    f.close()
                except (OSError, RuntimeError) as exc:
                    errors.insert(0, exc)
            if errors:
                _close_quietly(f)
                failed.append(f"{path}: {_io_reason(errors[0])}")
        if failed:
            raise SessionError(f"could not finish writing {'; '.join(failed)}; the last writes may be lost")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(SessionError):  # the error in flight says more
            self.close()

    def _writing(self, what: str, need_bytes: int = 0):
        """Context manager around writes to the session file (see :func:`_guarded_write`);
        yields ``commit()``. A failed write closes the session: HDF5 must not touch that file
        handle again (flushing it after a failed close crashes the process)."""

        def forget() -> None:
            self._f = None

        return _guarded_write(self._writable(), self._path, what, on_fail=forget, need_bytes=need_bytes)

    def __repr__(self) -> str:
        state = "closed" if self._f is None else ("complete" if self.complete else "incomplete")
        views = list(self.view_names)
        return f"Session({str(self._path)!r}, views={views}, frames={self._T}, {state})"

    def flush(self) -> None:
        with _guarded_write(self._h5(), self._path, "buffered data"):
            pass

    def mark_complete(self, force: bool = False) -> None:
        """Set ``complete = True``. Refuses if some frame was never written, unless ``force``."""
        f = self._writable()
        if not force:
            missing = np.flatnonzero(~self.frames_written)
            if missing.size:
                raise SessionError(
                    f"cannot mark {self._path} complete: {missing.size} frame(s) not written for "
                    f"every "
                    f"view (first: {missing[:10].tolist()}); write them or pass force=True"
                )
        with self._writing("the 'complete' flag"):
            f.attrs["complete"] = True

    def _h5(self) -> h5py.File:
        if self._f is None or not self._f.id.valid:
            raise SessionError(f"session {self._path} is closed")
        return self._f

    def _writable(self) -> h5py.File:
        f = self._h5()
        if self._mode != "a":
            raise SessionError(
                f"session {self._path} is open read-only; use Session.open(path, mode='a')"
            )
        return f

    # ---------------------------------------------------------------- properties ----------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def rig(self) -> Rig:
        return self._rig

    @property
    def view_names(self) -> tuple[str, ...]:
        return self._rig.names

    @property
    def num_views(self) -> int:
        return len(self._rig)

    @property
    def num_frames(self) -> int:
        return self._T

    def __len__(self) -> int:
        return self._T

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """Per view ``(width, height)`` of the stored images."""
        return {c.name: tuple(c.image_size) for c in self._rig}

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` shared by all views; SessionError if views differ (see
        image_sizes)."""
        sizes = set(self.image_sizes.values())
        if len(sizes) != 1:
            raise SessionError(
                f"views have different image sizes {self.image_sizes}; use image_sizes"
            )
        return sizes.pop()

    @property
    def complete(self) -> bool:
        return bool(self._h5().attrs.get("complete", False))

    @property
    def provenance(self) -> dict:
        with _reading(self._path, "provenance"):
            return json.loads(self._h5().attrs.get("provenance", "{}"))

    @property
    def attrs(self) -> dict:
        """Root attributes as a plain dict (format, format_version, created_by, ...)."""
        with _reading(self._path, "root attributes"):
            return {
                k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in self._h5().attrs.items()
            }

    # ---------------------------------------------------------------- world convention ----
    @property
    def world_up(self) -> str | None:
        """The world's up axis (one of :data:`WORLD_UP_AXES`) as recorded by ingest / rig import
        (``/rig`` attribute ``world_up``), or None when the session does not record it (then
        mvcap's own convention, +Y up, is the best guess: synthetic scenes and the demo)."""
        up = self._h5()["rig"].attrs.get("world_up")
        return None if up is None else str(up)

    @property
    def world_units(self) -> str:
        """Length unit of every stored position (``/rig`` attribute ``world_units``): always "m"."""
        return str(self._h5()["rig"].attrs.get("world_units", "m"))

    def set_world_convention(self, up: str, units: str = "m") -> None:
        """Record the world's up axis (``"+z"``, ``"y"`` = ``"+y"``, ...) and units (only "m":
        mvcap stores metres) in the ``/rig`` group."""
        up = normalize_up(up)
        if units != "m":
            raise SessionError(f"world units must be 'm' (mvcap stores metres), got {units!r}")
        g = self._writable()["rig"]
        g.attrs["world_up"] = up
        g.attrs["world_units"] = units
        self._f.flush()

    @property
    def original_rig(self) -> Rig | None:
        """The rig this session was created with, where :meth:`replace_rig` replaced it (else None)."""
        if "rig_original" not in self._h5():
            return None
        with _reading(self._path, "the original rig"):  # a damaged file is a SessionError, as every read
            g = self._h5()["rig_original"]
            return Rig.from_arrays(g["names"].asstr()[()].tolist(), g["K"][()], g["dist"][()], g["R_world2cam"][()],
                                   g["t_world2cam"][()], g["image_size"][()])  # fmt: skip

    def replace_rig(self, rig: Rig) -> None:
        """Store a new calibration of the same cameras (same names, order and image sizes), e.g.
        one refined by :mod:`mvcap.rigrefine`. The first replacement keeps the rig it replaces as
        ``/rig_original`` (:attr:`original_rig`). Initial estimates, subjects and results made with
        the old rig are left as they are: redo them."""
        old = self._rig
        if rig.names != old.names or [c.image_size for c in rig] != [c.image_size for c in old]:
            raise SessionError(
                f"the new rig must have the session's cameras {list(old.names)} with their image sizes "
                f"{[c.image_size for c in old]}; got {list(rig.names)} with {[c.image_size for c in rig]}"
            )
        f = self._writable()
        arrays = rig.to_arrays()
        with self._writing("the rig"):
            if "rig_original" not in f:
                f.copy(f["rig"], "rig_original")
            for k in ("K", "dist", "R_world2cam", "t_world2cam"):
                f["rig"][k][...] = np.asarray(arrays[k], np.float64)
        self._rig = rig

    # ---------------------------------------------------------------- frames --------------
    def _view(self, view: str | int) -> str:
        if isinstance(view, (int, np.integer)):
            if not -self.num_views <= int(view) < self.num_views:
                raise SessionError(f"view index {view} out of range for {self.num_views} views")
            return self.view_names[int(view)]
        if view not in self.view_names:
            raise SessionError(
                f"no view named {view!r} in {self._path}; views are {list(self.view_names)}"
            )
        return view

    def _frame(self, t) -> int:
        t = int(t)
        if not -self._T <= t < self._T:
            raise SessionError(f"frame {t} out of range for a session of {self._T} frames")
        return t % self._T

    def _check_images(self, images, view: str, n: int | None) -> np.ndarray:
        images = _np(images)
        w, h = self.image_sizes[view]
        expect = (h, w, 3) if n is None else (n, h, w, 3)
        if images.shape != expect:
            raise SessionError(
                f"images for view {view!r} must have shape {expect} (H, W, 3), got {images.shape}"
            )
        if images.dtype != np.uint8:
            raise SessionError(
                f"images must be uint8, got {images.dtype}; convert [0, 1] floats with "
                "(np.clip(x, 0, 1) * 255).round().astype(np.uint8)"
            )
        return images

    def write_frame(self, t: int, images, timestamp: float | None = None) -> None:
        """Write frame ``t`` of every view: images (V, H, W, 3) uint8 in rig view order.

        timestamp: seconds (default ``t / fps``). Views with different sizes: pass a list.
        """
        f = self._writable()
        t = self._frame(t)
        if isinstance(images, (list, tuple)):
            if len(images) != self.num_views:
                raise SessionError(f"need one image per view ({self.num_views}), got {len(images)}")
        else:
            images = _np(images)
            if images.ndim != 4 or images.shape[0] != self.num_views:
                raise SessionError(
                    f"images must have shape (V={self.num_views}, H, W, 3), got {images.shape}"
                )
        ts = t / self._fps if timestamp is None else float(timestamp)
        checked = [self._check_images(images[i], v, None) for i, v in enumerate(self.view_names)]
        with self._writing(f"frame {t}", need_bytes=sum(x.nbytes for x in checked)) as commit:
            for v, img in zip(self.view_names, checked, strict=True):
                vg = f["frames"][v]
                images_ds, ts_ds = vg["images"], vg["timestamps"]  # held: flushed below, never GC-flushed
                images_ds[t] = img
                ts_ds[t] = ts
                images_ds.flush()
                ts_ds.flush()
            commit()  # the images are on disk before any view says "written"
            for v in self.view_names:
                f["frames"][v]["written"][t] = True

    def write_view_frames(self, view: str | int, start: int, images, timestamps=None) -> None:
        """Write frames ``start .. start+T-1`` of one view: images (T, H, W, 3) uint8."""
        f = self._writable()
        v = self._view(view)
        images = _np(images)
        if images.ndim != 4:
            raise SessionError(f"images must have shape (T, H, W, 3), got {images.shape}")
        n = images.shape[0]
        images = self._check_images(images, v, n)
        start = self._frame(start)
        if start + n > self._T:
            raise SessionError(
                f"frames {start}..{start + n - 1} exceed the session's {self._T} frames"
            )
        if timestamps is None:
            timestamps = np.arange(start, start + n) / self._fps
        timestamps = _np(timestamps, np.float64)
        if timestamps.shape != (n,):
            raise SessionError(f"timestamps must have shape ({n},), got {timestamps.shape}")
        with self._writing(f"frames {start}..{start + n - 1} of view {v!r}", need_bytes=images.nbytes) as commit:
            vg = f["frames"][v]
            images_ds, ts_ds = vg["images"], vg["timestamps"]
            images_ds[start : start + n] = images
            ts_ds[start : start + n] = timestamps
            images_ds.flush()
            ts_ds.flush()
            commit()  # on disk before they are marked written
            vg["written"][start : start + n] = True

    def read_frame(
        self, t: int, views: Sequence[str | int] | None = None, allow_missing: bool = False
    ) -> np.ndarray:
        """Frame ``t`` of the given views (default all, rig order): (V, H, W, 3) uint8, or a
        list of V (H_v, W_v, 3) arrays when the views differ in size (``mvcap.render.pad_views``
        puts them on one canvas).

        Raises SessionError if a frame was never written (unless ``allow_missing``: zeros).
        """
        names = self.view_names if views is None else [self._view(v) for v in views]
        t = self._frame(t)
        f = self._h5()
        one_size = len({self.image_sizes[v] for v in names}) == 1
        out = []
        with _reading(self._path, f"frame {t}"):
            for v in names:
                vg = f["frames"][v]
                if not allow_missing and not bool(vg["written"][t]):
                    raise SessionError(
                        f"frame {t} of view {v!r} was never written to {self._path} "
                        "(ingest interrupted?)"
                    )
                out.append(vg["images"][t])
        return np.stack(out) if one_size else out

    def read_view(
        self, view: str | int, frames=slice(None), allow_missing: bool = False
    ) -> np.ndarray:
        """Frames of one view: (T', H, W, 3) uint8. ``frames``: slice, indices or bool mask."""
        v = self._view(view)
        idx = _frames_to_index(frames, self._T)
        with _reading(self._path, f"frames of view {v!r}"):
            vg = self._h5()["frames"][v]
            if not allow_missing:
                written = vg["written"][()]
                missing = idx[~written[idx]]
                if missing.size:
                    raise SessionError(
                        f"frames {missing[:10].tolist()} of view {v!r} were never written to "
                        f"{self._path}"
                    )
            return _read_rows(vg["images"], idx)

    def timestamps(self, view: str | int) -> np.ndarray:
        """(T,) float64 seconds for one view (NaN for frames not written)."""
        v = self._view(view)
        with _reading(self._path, f"timestamps of view {v!r}"):
            return self._h5()["frames"][v]["timestamps"][()]

    def view_frames_written(self, view: str | int) -> np.ndarray:
        """(T,) bool: frames written for one view."""
        v = self._view(view)
        with _reading(self._path, f"frames_written of view {v!r}"):
            return self._h5()["frames"][v]["written"][()].astype(bool)

    @property
    def frames_written(self) -> np.ndarray:
        """(T,) bool: frames written for *every* view (what ingest still needs is ``~this``)."""
        out = np.ones(self._T, bool)
        for v in self.view_names:
            out &= self.view_frames_written(v)
        return out

    # ---------------------------------------------------------------- subject -------------
    def write_subject(self, subject: Subject) -> None:
        """Store (replace) the subject: betas, texture, vertex colours, name, gender, meta."""
        f = self._writable()
        if not isinstance(subject, Subject):
            raise SessionError(
                f"write_subject needs an mvcap.subject.Subject, got {type(subject).__name__}"
            )
        with self._writing("the subject"):
            if "subject" in f:
                del f["subject"]
            g = f.create_group("subject")
            g.attrs["name"] = subject.name
            g.attrs["gender"] = subject.gender
            g.attrs["meta"] = json.dumps(subject.meta, sort_keys=True)
            g.create_dataset("betas", data=np.asarray(subject.betas, np.float32))
            if subject.texture is not None:
                g.create_dataset("texture", data=np.asarray(subject.texture), compression="gzip")
            if subject.vertex_colors is not None:
                g.create_dataset("vertex_colors", data=np.asarray(subject.vertex_colors), compression="gzip")
            if subject.displacement_net is not None:
                g.create_dataset("displacement_net", data=np.frombuffer(subject.displacement_net, np.uint8))

    @property
    def subject(self) -> Subject | None:
        """The stored Subject, or None if none was written."""
        f = self._h5()
        if "subject" not in f:
            return None
        with _reading(self._path, "the subject"):
            g = f["subject"]
            return Subject(
                name=str(g.attrs["name"]),
                betas=g["betas"][()],
                texture=g["texture"][()] if "texture" in g else None,
                vertex_colors=g["vertex_colors"][()] if "vertex_colors" in g else None,
                gender=str(g.attrs["gender"]),
                meta=json.loads(g.attrs.get("meta", "{}")),
                displacement_net=g["displacement_net"][()] if "displacement_net" in g else None,
            )

    @property
    def subject_betas(self) -> np.ndarray | None:
        """The stored subject's shape (B,) float32 without reading its texture or network, or None."""
        f = self._h5()
        if "subject" not in f:
            return None
        with _reading(self._path, "the subject's betas"):
            return np.asarray(f["subject"]["betas"][()], np.float32)

    # ---------------------------------------------------------------- init ----------------
    def write_init(self, pose_rotvecs, betas=None, transl=None, frames=None) -> None:
        """Initial estimates for ``frames`` (default: all T). Shapes (T',24,3), (T',10) or (10,),
        (T',3). Accepts a BodyParams as the first argument (then betas/transl are ignored)."""
        f = self._writable()
        if isinstance(pose_rotvecs, BodyParams):
            params = pose_rotvecs
        else:
            try:
                params = BodyParams(pose_rotvecs, betas, transl)
            except ValueError as exc:
                raise SessionError(f"write_init: {exc}") from exc
        idx = _frames_to_index(frames, self._T, "write_init")
        if len(params) != idx.size:
            raise SessionError(
                f"write_init: {len(params)} frames of parameters for {idx.size} frame indices"
            )
        with self._writing("initial estimates") as commit:
            g = f["init"]
            for k in _BODY_FIELDS:
                _write_rows(g[k], idx, getattr(params, k))
            commit()  # the estimates are on disk before they are marked valid
            _write_rows(g["valid"], idx, np.ones(idx.size, bool))

    @property
    def init_valid(self) -> np.ndarray:
        """(T,) bool: frames that have an initial estimate."""
        with _reading(self._path, "init/valid"):
            return self._h5()["init"]["valid"][()].astype(bool)

    def read_init(self, frames=None, require_valid: bool = True) -> BodyParams:
        """Initial estimates for ``frames`` (default all). SessionError if any requested frame has
        none, unless ``require_valid=False`` (then those frames are NaN)."""
        idx = _frames_to_index(frames, self._T, "read_init")
        with _reading(self._path, "init"):
            g = self._h5()["init"]
            if require_valid:
                valid = g["valid"][()].astype(bool)
                missing = idx[~valid[idx]]
                if missing.size:
                    raise SessionError(
                        f"no initial estimate for frames {missing[:10].tolist()}"
                        f"{' ...' if missing.size > 10 else ''} in {self._path}; write_init them "
                        "or pass require_valid=False"
                    )
            return BodyParams(*(_read_rows(g[k], idx) for k in _BODY_FIELDS))

    # ---------------------------------------------------------------- detections ----------
    def write_detections(self, t: int, keypoints, masks=None, keypoint_format: str = "mediapipe_pose_33") -> None:
        """2D detections of frame ``t`` for every view.

        keypoints: (V, K, 3) float ``[x_px, y_px, confidence]`` in the stored (distorted) image's
        pixels; a keypoint not found has confidence 0 (x, y may be NaN).
        masks: (V, H, W) bool / uint8 person masks (0-255 or 0-1), a list of V (H_v, W_v) masks
        (views of different sizes), or None.
        All frames of a session share one ``keypoint_format`` and K.
        """
        f = self._writable()
        t = self._frame(t)
        kp = _np(keypoints, np.float32)
        if kp.ndim != 3 or kp.shape[0] != self.num_views or kp.shape[2] != 3:
            raise SessionError(
                f"keypoints must have shape (V={self.num_views}, K, 3) [x, y, confidence], got {kp.shape}"
            )
        sizes = [self.image_sizes[v][::-1] for v in self.view_names]
        masks_u8 = None
        if masks is not None:
            m = [_np(mi) for mi in masks] if isinstance(masks, (list, tuple)) else _np(masks)
            bad = not isinstance(m, list) and m.ndim != 3
            if bad or len(m) != self.num_views or any(mi.shape != hw for mi, hw in zip(m, sizes, strict=False)):
                shape = [mi.shape for mi in m] if isinstance(m, list) else m.shape
                raise SessionError(f"masks must have shape (V={self.num_views}, H, W) = view sizes, got {shape}")
            masks_u8 = [
                (mi.astype(np.uint8) * 255 if mi.dtype == bool or mi.max(initial=0) <= 1 else mi).astype(np.uint8)
                for mi in m
            ]
        g = f.get("detections")
        if g is not None:
            fmt = str(g.attrs["keypoint_format"])
            if fmt != keypoint_format or g["keypoints"].shape[2] != kp.shape[1]:
                raise SessionError(
                    f"this session's detections are {fmt!r} with {g['keypoints'].shape[2]} keypoints; got "
                    f"{keypoint_format!r} with {kp.shape[1]}. Delete them first (delete_detections) to switch"
                )
        mask_bytes = sum(x.nbytes for x in masks_u8) if masks_u8 is not None else 0
        with self._writing(f"detections of frame {t}", need_bytes=kp.nbytes * self._T + mask_bytes) as commit:
            if g is None:
                g = f.create_group("detections")
                g.attrs["keypoint_format"] = str(keypoint_format)
                g.create_dataset(
                    "keypoints", shape=(self._T, self.num_views, kp.shape[1], 3), dtype=np.float32, fillvalue=np.nan
                )
                g.create_dataset("written", shape=(self._T,), dtype=bool, fillvalue=False)
            if masks_u8 is not None:
                mg = g.require_group("masks")
                for v, (h, w), mi in zip(self.view_names, sizes, masks_u8, strict=True):
                    if v not in mg:
                        mg.create_dataset(
                            v, shape=(self._T, h, w), dtype=np.uint8, chunks=(1, h, w), fillvalue=0,
                            **_filter(FRAME_COMPRESSION),
                        )  # fmt: skip
                    mg[v][t] = mi
            g["keypoints"][t] = kp
            commit()  # keypoints and masks on disk before the frame is marked detected
            g["written"][t] = True

    @property
    def has_detections(self) -> bool:
        return "detections" in self._h5()

    @property
    def detections_written(self) -> np.ndarray:
        """(T,) bool: frames with stored detections."""
        if not self.has_detections:
            return np.zeros(self._T, bool)
        with _reading(self._path, "detections/written"):
            return self._h5()["detections"]["written"][()].astype(bool)

    @property
    def keypoint_format(self) -> str | None:
        if not self.has_detections:
            return None
        return str(self._h5()["detections"].attrs["keypoint_format"])

    def read_keypoints(self, frames=None) -> np.ndarray:
        """(T', V, K, 3) float32 ``[x, y, confidence]`` for ``frames`` (default all); NaN rows for
        frames never detected."""
        if not self.has_detections:
            raise SessionError(f"session {self._path} has no detections; run `mvcap detect` first")
        idx = _frames_to_index(frames, self._T, "read_keypoints")
        with _reading(self._path, "detections/keypoints"):
            return _read_rows(self._h5()["detections"]["keypoints"], idx)

    def read_masks(self, t: int) -> np.ndarray | list[np.ndarray] | None:
        """(V, H, W) float32 in [0, 1] person masks of frame ``t`` (a list of V (H_v, W_v) arrays
        when the views differ in size), or None if none are stored."""
        if not self.has_detections or "masks" not in self._h5()["detections"]:
            return None
        t = self._frame(t)
        with _reading(self._path, f"masks of frame {t}"):
            mg = self._h5()["detections"]["masks"]
            out = [mg[v][t].astype(np.float32) / 255.0 for v in self.view_names]
        return np.stack(out) if len({m.shape for m in out}) == 1 else out

    def delete_detections(self) -> None:
        f = self._writable()
        if "detections" in f:
            with self._writing("the deletion of the detections"):
                del f["detections"]

    # ---------------------------------------------------------------- ground truth --------
    def write_ground_truth(self, params: BodyParams, **extra_arrays) -> None:
        """Store (replace) per-frame ground-truth body parameters (T frames) plus any extra
        named arrays (e.g. ``visibility=(T, V, N) bool``, ``joints=(T, J, 3)``)."""
        f = self._writable()
        if not isinstance(params, BodyParams):
            raise SessionError("write_ground_truth needs a BodyParams")
        if len(params) != self._T:
            raise SessionError(f"ground truth has {len(params)} frames, the session has {self._T}")
        with self._writing("the ground truth"):
            if "ground_truth" in f:
                del f["ground_truth"]
            g = f.create_group("ground_truth")
            for k in _BODY_FIELDS:
                g.create_dataset(k, data=getattr(params, k))
            eg = g.create_group("extra")
            for name, arr in extra_arrays.items():
                a = _np(arr)
                if a.dtype.kind in "OUS":
                    eg.create_dataset(
                        name,
                        data=np.array([str(x) for x in a.ravel()], dtype=object).reshape(a.shape),
                        dtype=_STR,
                    )
                else:
                    eg.create_dataset(name, data=a, compression="gzip" if a.size > 4096 else None)

    @property
    def has_ground_truth(self) -> bool:
        return "ground_truth" in self._h5()

    def read_ground_truth(self) -> BodyParams:
        if not self.has_ground_truth:
            raise SessionError(f"session {self._path} has no ground truth")
        with _reading(self._path, "ground truth"):
            g = self._h5()["ground_truth"]
            return BodyParams(*(g[k][()] for k in _BODY_FIELDS))

    def read_ground_truth_extras(self) -> dict[str, np.ndarray]:
        """The extra named ground-truth arrays (empty dict if none)."""
        if not self.has_ground_truth:
            raise SessionError(f"session {self._path} has no ground truth")
        with _reading(self._path, "ground truth extras"):
            g = self._h5()["ground_truth"]
            if "extra" not in g:
                return {}
            out = {}
            for k, ds in g["extra"].items():
                out[k] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
            return out

    # ---------------------------------------------------------------- results -------------
    # Each run lives in its own side file <session>.results/<run>.h5 (root group laid out like
    # a version-1 /results/<run> group), so a failed results write can never damage the frames,
    # init or ground truth. Version-1 sessions' in-file runs are still read; writing to one
    # copies it to a side file first (the side file then shadows it).
    @property
    def results_dir(self) -> Path:
        """Folder of this session's results side files (``take1.h5.results``)."""
        return results_dir(self._path)

    def _results_path(self, name: str) -> Path:
        return self.results_dir / f"{name}.h5"

    def _session_id(self) -> str:
        """Identity results side files are tied to (version-1 files: their creation time)."""
        a = self._h5().attrs
        return str(a.get("session_id", a.get("created_at", "")))

    def _side_run_ok(self, path: Path) -> bool:
        """Whether a side file is a results run of *this* session (not of a replaced file)."""
        try:
            with h5py.File(path, "r") as f:
                return f.attrs.get("format") == RESULTS_FORMAT and str(f.attrs.get("session_id")) == self._session_id()
        except OSError:
            return path.stat().st_size > 0  # unreadable: report it when read, never hide it

    def _side_runs(self) -> set[str]:
        names = {name for name in self._runs if self._runs[name].id.valid}
        if self.results_dir.is_dir():
            names |= {p.stem for p in self.results_dir.glob("*.h5") if p.stem not in names and self._side_run_ok(p)}
        return names

    def _in_file_runs(self) -> set[str]:
        f = self._h5()
        return set(f["results"].keys()) if "results" in f else set()

    def result_names(self) -> list[str]:
        return sorted(self._side_runs() | self._in_file_runs())

    def _results_group(self, name: str, write: bool = False) -> h5py.Group:
        """The run's data: a side file's root group (opened once, kept open) or, for runs of
        version-1 files not written since, the in-file group ``/results/<name>``."""
        f = self._runs.get(name)
        if f is not None and f.id.valid and (not write or f.mode == "r+"):
            return f["/"]
        path = self._results_path(name)
        if name in self._side_runs() or (write and path.exists()):
            if f is not None:
                _close_quietly(f)
            try:
                self._runs[name] = h5py.File(path, "r+" if write else "r")
            except OSError as exc:
                if "lock" in str(exc).lower():
                    raise SessionError(
                        f"results run {name!r} ({path}) is open for writing in another process; wait for it "
                        "to finish, or read a copy of the file"
                    ) from exc
                raise SessionError(
                    f"cannot open results run {name!r} ({path}): {_io_reason(exc)}; the file may be truncated "
                    f"(a full disk?): delete it to redo the run"
                ) from exc
            return self._runs[name]["/"]
        if name in self._in_file_runs() and not write:
            return self._h5()["results"][name]
        raise SessionError(f"no results run {name!r} in {self._path}; runs are {self.result_names()}")

    def _new_side_file(self, name: str, fill) -> None:
        """Create ``<run>.h5`` atomically (written as ``.partial`` then renamed) with every
        dataset allocated in full now: later per-frame writes overwrite in place and need no
        new disk space. ``fill(group)`` writes the contents."""
        path = self._results_path(name)
        tmp = path.with_name(path.name + ".partial")
        need = self._T * (NUM_JOINTS * 3 + NUM_BETAS + 3 + self.num_views + 3) * 4
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _check_space(path.parent, need, f"results run {name!r}")
            f = h5py.File(tmp, "w")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SessionError(f"cannot create the file of results run {name!r} ({tmp}): {_io_reason(exc)}") from exc
        try:
            with _guarded_write(
                f, tmp, f"results run {name!r}", on_fail=lambda: tmp.unlink(missing_ok=True), need_bytes=need
            ):
                f.attrs["format"] = RESULTS_FORMAT
                f.attrs["format_version"] = np.int64(1)
                f.attrs["session"] = self._path.name
                f.attrs["session_id"] = self._session_id()
                fill(f)
            f.close()
        except BaseException:
            _close_quietly(f)
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)

    def results_config_matches(self, name: str, config: Any) -> bool:
        """Whether run ``name`` (which must exist) was started with ``config`` (dict or
        dataclass): what resuming it with that config needs (see :meth:`results_run`)."""
        stored = self._results_group(name).attrs.get("config", "{}")
        return _same_config(json.loads(stored), json.loads(_to_json(config, "results config")))

    def results_run(
        self, name: str, create: bool = True, config: Any = None, overwrite: bool = False
    ) -> ResultsWriter:
        """Writer for results run ``name`` (stored in ``results_dir / f"{name}.h5"``).

        New run: created (needs ``create=True``) with ``config`` (dict or dataclass, stored as
        JSON). Existing run: reopened for resuming; a ``config`` that differs from the stored
        one is an error unless ``overwrite=True``, which deletes the old run and starts afresh.
        Settings absent from the stored config are not compared: they were added to mvcap
        after the run started, and a new setting's default keeps the old behaviour.
        """
        self._writable()
        if not name or "/" in name or os.sep in name or name.startswith("."):
            raise SessionError(f"results run name must be non-empty, without '/' and not start with '.', got {name!r}")
        cfg_json = None if config is None else _to_json(config, "results config")
        if overwrite and name in self.result_names():
            self.delete_results(name)
        if name in self.result_names():
            stored = self._results_group(name).attrs.get("config", "{}")
            if cfg_json is not None and not self.results_config_matches(name, config):
                raise SessionError(
                    f"results run {name!r} in {self._path} was started with a different config; "
                    f"resume with the same config, pick another run name, or pass overwrite=True "
                    f"to discard it. Stored: {stored}  New: {cfg_json}"
                )
            if name not in self._side_runs():  # a version-1 in-file run: continue it in a side file
                src = self._h5()["results"][name]

                def copy(dst):
                    for k in src:
                        src.copy(src[k], dst, name=k)
                    for k, v in src.attrs.items():
                        dst.attrs[k] = v

                self._new_side_file(name, copy)
            return ResultsWriter(self, name)
        if not create:
            raise SessionError(
                f"no results run {name!r} in {self._path}; runs are {self.result_names()}"
            )
        T, V = self._T, self.num_views
        if self._results_path(name).exists():
            log.warning("replacing %s: a results file of another session file", self._results_path(name))
            self._results_path(name).unlink()

        def fill(g):
            g.attrs["config"] = cfg_json if cfg_json is not None else "{}"
            g.attrs["created_at"] = _now()
            g.attrs["created_by"] = f"mvcap {_mvcap_version()}"
            g.create_dataset("view_names", data=np.array(list(self.view_names), dtype=object), dtype=_STR)
            for k, shape in (("pose_rotvecs", (T, NUM_JOINTS, 3)), ("betas", (T, NUM_BETAS)), ("transl", (T, 3))):
                g.create_dataset(k, data=np.full(shape, np.nan, np.float32))
            g.create_dataset("done", data=np.zeros(T, bool))
            g.create_dataset("residual_px", data=np.full((T, V), np.nan, np.float32))
            g.create_dataset("iterations", data=np.zeros(T, np.int32))
            g.create_dataset("seconds", data=np.full(T, np.nan, np.float32))

        self._new_side_file(name, fill)
        return ResultsWriter(self, name)

    def delete_results(self, name: str) -> None:
        """Delete results run ``name`` (its side file and, in version-1 files, its group)."""
        self._writable()
        if name not in self.result_names():
            raise SessionError(f"no results run {name!r} in {self._path}")
        _close_quietly(self._runs.pop(name, None))
        self._results_path(name).unlink(missing_ok=True)
        if name in self._in_file_runs():
            with self._writing(f"the deletion of results run {name!r}"):
                del self._h5()["results"][name]

    def read_results(self, name: str) -> Results:
        if name not in self.result_names():
            raise SessionError(
                f"no results run {name!r} in {self._path}; runs are {self.result_names()}"
            )
        with _reading(self._path, f"results run {name!r}"):
            g = self._results_group(name)
            return Results(
                name=name,
                params=BodyParams(*(g[k][()] for k in _BODY_FIELDS)),
                done=g["done"][()].astype(bool),
                residual_px=g["residual_px"][()],
                iterations=g["iterations"][()],
                seconds=g["seconds"][()],
                config=json.loads(g.attrs.get("config", "{}")),
                view_names=tuple(g["view_names"].asstr()[()].tolist())
                if "view_names" in g
                else self.view_names,
                created_at=str(g.attrs.get("created_at", "")),
            )


def _same_config(stored, new) -> bool:
    """Equal, ignoring keys of ``new`` that ``stored`` lacks (settings added since)."""
    if isinstance(stored, dict) and isinstance(new, dict):
        return all(k in new and _same_config(v, new[k]) for k, v in stored.items())
    return stored == new


def _create_body_datasets(g: h5py.Group, T: int) -> None:
    g.create_dataset("pose_rotvecs", shape=(T, NUM_JOINTS, 3), dtype=np.float32, fillvalue=np.nan)
    g.create_dataset("betas", shape=(T, NUM_BETAS), dtype=np.float32, fillvalue=np.nan)
    g.create_dataset("transl", shape=(T, 3), dtype=np.float32, fillvalue=np.nan)


class ResultsWriter:
    """Writes one results run frame by frame into its side file; flushes after every frame."""

    def __init__(self, session: Session, name: str):
        self._session = session
        self.name = name

    def _group(self) -> h5py.Group:
        self._session._writable()
        return self._session._results_group(self.name, write=True)

    @property
    def config(self) -> dict:
        return json.loads(self._session._results_group(self.name).attrs.get("config", "{}"))

    def write(
        self,
        t: int,
        pose_rotvecs,
        betas,
        transl,
        residual_px=None,
        iterations: int = 0,
        seconds: float = float("nan"),
    ) -> None:
        """Store frame ``t``: pose_rotvecs (24,3), betas (10,), transl (3,), residual_px (V,)
        (NaN where unknown), then, once that is flushed, mark it done and flush.
        SessionError when the file cannot be written (the frames done before are kept)."""
        s = self._session
        t = s._frame(t)
        pose = _np(pose_rotvecs, np.float32)
        b = _np(betas, np.float32)
        tr = _np(transl, np.float32)
        if pose.shape != (NUM_JOINTS, 3):
            raise SessionError(f"pose_rotvecs must have shape ({NUM_JOINTS}, 3), got {pose.shape}")
        if b.shape != (NUM_BETAS,):
            raise SessionError(f"betas must have shape ({NUM_BETAS},), got {b.shape}")
        if tr.shape != (3,):
            raise SessionError(f"transl must have shape (3,), got {tr.shape}")
        V = s.num_views
        res = (
            np.full(V, np.nan, np.float32) if residual_px is None else _np(residual_px, np.float32)
        )
        if res.shape != (V,):
            raise SessionError(
                f"residual_px must have shape ({V},) (one per view), got {res.shape}"
            )
        g = self._group()
        values = {"pose_rotvecs": pose, "betas": b, "transl": tr, "residual_px": res}
        values |= {"iterations": np.int32(iterations), "seconds": np.float32(seconds)}
        with _guarded_write(g.file, s._results_path(self.name), f"results of frame {t} (run {self.name!r})") as commit:
            for k, v in values.items():
                g[k][t] = v
            commit()  # a frame is only "done" once all its fields are on disk
            g["done"][t] = True

    def done_frames(self) -> np.ndarray:
        """(T,) bool: frames already written (what a resumed run can skip)."""
        return self._session._results_group(self.name)["done"][()].astype(bool)

    def next_frame(self) -> int | None:
        """First frame not yet done, or None when all are."""
        todo = np.flatnonzero(~self.done_frames())
        return int(todo[0]) if todo.size else None

    def read(self) -> Results:
        return self._session.read_results(self.name)
