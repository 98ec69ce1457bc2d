"""Rig file formats.

Every reader returns a :class:`mvcap.cameras.Rig` in mvcap's convention (OpenCV pinhole,
world -> camera ``x_cam = R x_world + t`` in metres, pixel origin at the centre of the
top-left pixel, distortion ``(k1, k2, p1, p2, k3)``). Errors are :class:`RigError` whose
message names the file, the camera and the field.

=====================  ==========  ============================================================
format                 read/write  entry points
=====================  ==========  ============================================================
anipose / Pose2Sim     read+write  ``*.toml``: :func:`load_toml_rig`, :func:`save_toml_rig`
EasyMocap / OpenCV     read+write  folder with ``intri.yml`` + ``extri.yml`` (or either file):
YAML                               :func:`load_easymocap_rig`, :func:`save_easymocap_rig`
Qualisys               read        ``*.qca.txt``: :func:`load_qualisys_rig`
Vicon                  read        ``*.xcp``: :func:`load_vicon_rig`
=====================  ==========  ============================================================

:func:`load_rig` / :func:`save_rig` choose the format from the path.

anipose / Pose2Sim TOML (the layout ``aniposelib.cameras.CameraGroup.load`` reads)::

    [cam_0]
    name = "cam0"
    size = [width, height]
    matrix = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    distortions = [k1, k2, p1, p2, k3]
    rotation = [rx, ry, rz]        # Rodrigues vector, world -> camera
    translation = [tx, ty, tz]     # metres, world -> camera
    [metadata]
"""

from __future__ import annotations

import re
import tomllib
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mvcap.cameras import Camera, Rig, RigError, _image_size, rotmat_to_rotvec_np, rotvec_to_rotmat_np
from mvcap.config import read_text

__all__ = [
    "load_rig",
    "save_rig",
    "rig_world_up",
    "cameras_up_axis",
    "load_toml_rig",
    "save_toml_rig",
    "load_easymocap_rig",
    "save_easymocap_rig",
    "load_qualisys_rig",
    "load_vicon_rig",
    "vicon_radial_to_opencv",
    "RigError",
    "RigConversionWarning",
]

_TOML_FIELDS = ("size", "matrix", "distortions", "rotation", "translation")
_ROT_TOL = 1e-4  # same tolerance as mvcap.cameras

SUPPORTED = (
    ".toml (anipose/Pose2Sim), a folder or intri.yml/extri.yml (EasyMocap), "
    ".qca.txt (Qualisys, read only), .xcp (Vicon, read only)"
)
WRITABLE = ".toml (anipose/Pose2Sim), a folder or intri.yml path (EasyMocap intri.yml + extri.yml)"


class RigConversionWarning(UserWarning):
    """A rig was converted with an approximation (e.g. a distortion model refitted)."""


# ------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------
def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "easymocap"
    if name.endswith(".toml"):
        return "toml"
    if name.endswith(".qca.txt") or name.endswith(".qca"):
        return "qualisys"
    if name.endswith(".xcp"):
        return "vicon"
    if name.endswith((".yml", ".yaml")):
        return "easymocap"
    return "unknown"


def load_rig(path: str | Path, image_size: tuple[int, int] | None = None) -> Rig:
    """Load a rig, choosing the format from the path (see the module docstring).

    image_size: (width, height) for formats whose file may lack it (EasyMocap without
    ``H_<name>``/``W_<name>``; Qualisys without ``fov_video``). Where the file states a
    size, a different ``image_size`` is an error (rescale with ``Rig.with_image_size``).
    """
    path = Path(path)
    if not path.exists():
        raise RigError(f"rig file not found: {path}; pass the path of an existing rig file (e.g. --rig rig.toml)")
    kind = _kind(path)
    if kind == "toml":
        rig = load_toml_rig(path)
        if image_size is not None:
            for cam in rig:
                _check_size(path, cam.name, "size", cam.image_size, image_size)
        return rig
    if kind == "easymocap":
        return load_easymocap_rig(path, image_size=image_size)
    if kind == "qualisys":
        return load_qualisys_rig(path, image_size=image_size)
    if kind == "vicon":
        return load_vicon_rig(path, image_size=image_size)
    raise RigError(f"unknown rig file format '{path.suffix}' for {path}; supported: {SUPPORTED}")


def cameras_up_axis(rig: Rig, min_cos: float = 0.8) -> str | None:
    """The world axis (``"+y"``, ``"-z"``, ...) that points up by the cameras' layout, or None.

    Cameras around a subject look roughly horizontally and stand upright: the up line is the
    normal of the plane the optical axes lie closest to, its sign that of the cameras' mean
    image-up vector (``R_world2cam.T @ (0, -1, 0)``). None with fewer than two cameras, when the
    optical axes span no clear plane, when the normal is further than ``acos(min_cos)`` from
    every world axis, or when the sign is unclear (e.g. portrait cameras, image up horizontal)."""
    if len(rig) < 2:
        return None
    z = np.stack([c.R_world2cam[2] for c in rig])  # optical axes in the world
    img_up = np.mean([-c.R_world2cam[1] for c in rig], axis=0)
    _, sv, vt = np.linalg.svd(z)
    if not sv[-1] < 0.5 * sv[-2]:  # the optical axes span no clear plane (one heading)
        return None
    side = float(img_up @ vt[-1])
    if abs(side) < 0.3:
        return None
    u = vt[-1] * np.sign(side)
    k = int(np.argmax(np.abs(u)))
    return ("+" if u[k] > 0 else "-") + "xyz"[k] if abs(u[k]) >= min_cos else None


def rig_world_up(path: str | Path) -> str | None:
    """The up axis of a rig file's world (``"+y"``, ``"+z"``, ...), or None when unknown.

    * an ``[metadata] up`` in a TOML (``mvcap calibrate`` writes it);
    * Qualisys and Vicon: ``"+z"``, those systems' lab convention;
    * other files (Pose2Sim / anipose TOML, EasyMocap, older mvcap TOML): the axis the cameras'
      image-up directions agree on (:func:`cameras_up_axis`); when they do not agree,
      ``"+z"`` for Pose2Sim/anipose TOML and EasyMocap (their floor-board worlds are Z-up)
      and None for an mvcap TOML.
    """
    path = Path(path)
    kind = _kind(path)
    if kind in ("qualisys", "vicon"):
        return "+z"
    if kind not in ("toml", "easymocap"):
        return None
    mvcap_toml = False
    if kind == "toml":
        try:
            meta = tomllib.loads(path.read_text()).get("metadata", {})
        except (OSError, tomllib.TOMLDecodeError):
            return None
        if isinstance(meta, dict) and meta.get("up"):
            return str(meta["up"])
        mvcap_toml = isinstance(meta, dict) and meta.get("written_by") == "mvcap"
    try:
        up = cameras_up_axis(load_rig(path))
    except (RigError, OSError, ValueError):
        up = None
    return up if up is not None else (None if mvcap_toml else "+z")


def save_rig(rig: Rig, path: str | Path, up: str | None = None) -> None:
    """Write a rig: ``*.toml`` (anipose/Pose2Sim), or EasyMocap YAML when ``path`` is a
    folder (existing, or a path without suffix: created) or an ``intri.yml`` path (the
    ``extri.yml`` goes beside it). ``up``: the world's up axis, kept in the TOML's metadata."""
    path = Path(path)
    if path.suffix.lower() == ".toml":
        return save_toml_rig(rig, path, up=up)
    if path.suffix == "" and path.exists() and not path.is_dir():
        raise RigError(f"{path} is an existing file, not a folder; give a folder (EasyMocap) or a .toml/intri.yml path")
    if path.is_dir() or path.suffix == "" or path.suffix.lower() in (".yml", ".yaml"):
        return save_easymocap_rig(rig, path)
    raise RigError(f"cannot write rig format '{path.suffix}' ({path}); writable: {WRITABLE}")


def _size(path, name: str, field: str, width_height) -> tuple[int, int]:
    """(width, height) from a file's field, checked finite, positive and whole."""
    try:
        return _image_size(name, width_height)
    except RigError as exc:
        msg = str(exc).replace("field 'image_size'", f"field '{field}' (image_size)")
        raise RigError(f"{path}: {msg}") from None


def _check_size(path, name, field, from_file, image_size) -> None:
    want = tuple(int(s) for s in image_size)
    have = tuple(int(round(s)) for s in from_file)
    if want != have:
        raise RigError(
            f"{path}: camera '{name}': field '{field}' says the image is {have[0]}x{have[1]} but "
            f"image_size={want[0]}x{want[1]} was given; drop image_size, or load the rig and "
            "call Rig.with_image_size() to rescale it"
        )


def _is_rotation(R: np.ndarray) -> bool:
    return (
        R.shape == (3, 3)
        and bool(np.all(np.isfinite(R)))
        and (float(np.abs(R @ R.T - np.eye(3)).max()) <= _ROT_TOL and np.linalg.det(R) > 0)
    )


# ------------------------------------------------------------------------------------------
# anipose / Pose2Sim TOML
# ------------------------------------------------------------------------------------------
def load_toml_rig(path: str | Path) -> Rig:
    """Read an anipose/Pose2Sim calibration TOML. Errors name the section and field."""
    path = Path(path)
    text = read_text(path, "rig file", RigError)
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise RigError(f"{path}: not valid TOML ({str(exc)[:300]})") from None
    meta = data.get("metadata")
    if isinstance(meta, dict) and meta.get("kind") == "intrinsics":
        raise RigError(
            f"{path} holds camera intrinsics only (from mvcap calibrate --intrinsics-only), no camera poses; "
            f"calibrate the rig with them held: mvcap calibrate <board videos> --intrinsics {path} --out rig.toml"
        )
    cams = []
    for section, entry in data.items():
        if section == "metadata" or not isinstance(entry, dict):
            continue
        name = str(entry.get("name", section))
        missing = [f for f in _TOML_FIELDS if f not in entry]
        if missing:
            raise RigError(
                f"{path}: camera '{name}' (section [{section}]) is missing field(s) {missing}; "
                f"each camera needs {list(_TOML_FIELDS)}"
            )
        try:
            rotation = np.asarray(entry["rotation"], dtype=np.float64)
            if not np.all(np.isfinite(rotation)):
                raise RigError(
                    f"camera '{name}': field 'rotation' contains NaN or infinite values: {rotation.tolist()}"
                )
            if rotation.size not in (3, 9):
                raise RigError(
                    f"camera '{name}': field 'rotation' must be a Rodrigues vector [rx, ry, rz] "
                    f"(or a 3x3 matrix), got {rotation.size} values"
                )
            R = rotvec_to_rotmat_np(rotation) if rotation.size == 3 else rotation.reshape(3, 3)
            cams.append(
                Camera(
                    name=name,
                    K=np.asarray(entry["matrix"], dtype=np.float64),
                    dist=np.asarray(entry["distortions"], dtype=np.float64),
                    R_world2cam=R,
                    t_world2cam=np.asarray(entry["translation"], dtype=np.float64),
                    image_size=_size(path, name, "size", entry["size"]),
                )
            )
        except RigError as exc:
            msg = str(exc)
            raise RigError(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise RigError(f"{path}: camera '{name}' (section [{section}]) has a malformed value: {msg}") from None
    if not cams:
        raise RigError(f"{path}: no camera sections found (expected [cam_0], [cam_1], ...)")
    return Rig(tuple(cams))


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _fmt(x) -> str:
    if isinstance(x, str):
        # TOML basic string: escape backslash, quote and every control character
        return (
            '"'
            + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c) for c in x)
            + '"'
        )
    if isinstance(x, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x))


def save_toml_rig(rig: Rig, path: str | Path, up: str | None = None) -> None:
    """Write the anipose/Pose2Sim TOML layout (float64 values written exactly); ``up`` (e.g.
    ``"+z"``) is recorded as ``[metadata] up`` (read back by :func:`rig_world_up`)."""
    lines = []
    for i, cam in enumerate(rig):
        lines += [
            f"[cam_{i}]",
            f"name = {_fmt(cam.name)}",
            f"size = {_fmt(list(cam.image_size))}",
            f"matrix = {_fmt(cam.K.tolist())}",
            f"distortions = {_fmt(cam.dist.tolist())}",
            f"rotation = {_fmt(rotmat_to_rotvec_np(cam.R_world2cam).tolist())}",
            f"translation = {_fmt(cam.t_world2cam.tolist())}",
            "",
        ]
    lines += ["[metadata]", 'written_by = "mvcap"'] + ([f"up = {_fmt(str(up))}"] if up else []) + [""]
    path = Path(path)
    if path.is_dir():
        raise RigError(f"{path} is a folder; give the rig file to write, e.g. {path / 'rig.toml'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines), encoding="utf-8")
    except OSError as exc:
        raise RigError(f"cannot write rig file {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------
# EasyMocap / OpenCV YAML (intri.yml + extri.yml)
# ------------------------------------------------------------------------------------------
_KEY_SAFE = re.compile(r"^[A-Za-z0-9_\-]+$")


def _easymocap_paths(path: Path) -> tuple[Path, Path]:
    """(intri, extri) for a folder or either file; checks both exist."""
    if path.is_dir() or path.suffix == "":
        intri, extri = path / "intri.yml", path / "extri.yml"
    else:
        name = path.name
        if "intri" in name:
            intri, extri = path, path.with_name(name.replace("intri", "extri"))
        elif "extri" in name:
            intri, extri = path.with_name(name.replace("extri", "intri")), path
        else:
            raise RigError(
                f"{path}: a YAML rig must be an EasyMocap pair named intri.yml + extri.yml "
                "(pass the folder or either file)"
            )
    return intri, extri


def _open_fs(path: Path, mode: str):
    import cv2

    if mode == "r":  # OpenCV reads other bytes too, then fails on its keys
        read_text(path, "EasyMocap rig file", RigError)
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ if mode == "r" else cv2.FILE_STORAGE_WRITE)
    except (cv2.error, SystemError) as exc:  # malformed YAML surfaces as SystemError in cv2
        cause = exc.__cause__ or exc
        raise RigError(f"{path}: not a readable OpenCV YAML file ({str(cause).strip()[:300]})") from exc
    if not fs.isOpened():
        raise RigError(f"{path}: cannot open as OpenCV YAML")
    return fs


def _node_str(node) -> str:
    if node.isString():
        return node.string()
    if node.isInt():
        return str(int(node.real()))
    return ""


def _names(fs, path: Path) -> list[str] | None:
    node = fs.getNode("names")
    if node.empty() or node.isNone():
        return None
    if not node.isSeq():
        raise RigError(f"{path}: field 'names' must be a list of camera names")
    names = [_node_str(node.at(i)) for i in range(node.size())]
    if any(not n for n in names):
        raise RigError(f"{path}: field 'names' has an empty or non-text entry: {names}")
    return names


def _mat(fs, path: Path, name: str, key: str, shapes: tuple, required: bool = True) -> np.ndarray | None:
    node = fs.getNode(key)
    if node.empty() or node.isNone():
        if required:
            raise RigError(f"{path}: camera '{name}': field '{key}' is missing")
        return None
    m = node.mat()
    if m is None:
        raise RigError(f"{path}: camera '{name}': field '{key}' is not an OpenCV matrix (!!opencv-matrix)")
    m = np.asarray(m, dtype=np.float64)
    if m.size not in shapes and m.shape not in shapes:
        raise RigError(f"{path}: camera '{name}': field '{key}' has shape {m.shape}, expected one of {shapes}")
    return m


def _number(fs, key: str) -> float | None:
    node = fs.getNode(key)
    if node.empty() or node.isNone() or not (node.isInt() or node.isReal()):
        return None
    return float(node.real())


def load_easymocap_rig(path: str | Path, image_size: tuple[int, int] | None = None) -> Rig:
    """Read an EasyMocap rig: ``intri.yml`` + ``extri.yml`` (OpenCV FileStorage YAML).

    ``path`` is the folder holding both, or either file (the other is found beside it:
    ``intri`` <-> ``extri`` in the name). Layout, per camera ``<name>`` from ``names``:

    * intri.yml: ``K_<name>`` 3x3, ``dist_<name>`` 1x5 (k1 k2 p1 p2 k3; 4 values or more
      with zero tail accepted), optional ``H_<name>``/``W_<name>`` image height/width.
    * extri.yml: ``Rot_<name>`` 3x3 and/or ``R_<name>`` 3x1 Rodrigues (world -> camera;
      ``Rot`` is used when both are present and they must agree), ``T_<name>`` 3x1 metres.

    Without H/W the image size must come from ``image_size=(width, height)``.
    """
    intri, extri = _easymocap_paths(Path(path))
    for p, other in ((intri, "intrinsics"), (extri, "extrinsics")):
        if not p.exists():
            raise RigError(
                f"{p} not found: an EasyMocap rig needs both intri.yml and extri.yml in the same "
                f"folder ({other} are missing)"
            )
    import cv2

    fi, fe = _open_fs(intri, "r"), _open_fs(extri, "r")
    try:
        names = _names(fi, intri)
        if names is None:
            raise RigError(f"{intri}: field 'names' (the list of cameras) is missing")
        if len(set(names)) != len(names):
            raise RigError(f"{intri}: field 'names' repeats camera names: {names}")
        ext_names = _names(fe, extri)
        for n in ext_names or []:
            if n not in names:
                raise RigError(
                    f"{extri}: camera '{n}' (field 'names') is unknown: intri.yml has no "
                    f"intrinsics (K_{n}) for it; cameras in intri.yml are {names}"
                )
        # extrinsic keys naming a camera that intri.yml does not know
        for key in fe.root().keys():
            m = re.match(r"^(Rot|R|T)_(.+)$", key)
            if m and m.group(2) not in names:
                raise RigError(
                    f"{extri}: camera '{m.group(2)}' (field '{key}') is unknown; cameras in intri.yml are {names}"
                )
        cams = []
        for n in names:
            K = _mat(fi, intri, n, f"K_{n}", ((3, 3),))
            dist = _mat(fi, intri, n, f"dist_{n}", tuple(range(0, 15))).reshape(-1)
            if dist.size > 5:
                if np.any(dist[5:] != 0):
                    raise RigError(
                        f"{intri}: camera '{n}': field 'dist_{n}' has {dist.size} non-zero-tailed "
                        "coefficients; mvcap supports OpenCV's 5 (k1, k2, p1, p2, k3)"
                    )
                dist = dist[:5]
            h, w = _number(fi, f"H_{n}"), _number(fi, f"W_{n}")
            if h is None or w is None:
                if image_size is None:
                    raise RigError(
                        f"{intri}: camera '{n}': no image size (fields 'H_{n}'/'W_{n}' missing); pass "
                        "image_size=(width, height) (CLI: --image-size W H)"
                    )
                size = tuple(int(s) for s in image_size)
            else:
                size = _size(intri, n, f"W_{n}/H_{n}", (w, h))
                if image_size is not None:
                    _check_size(intri, n, f"W_{n}/H_{n}", size, image_size)
            rot = _mat(fe, extri, n, f"Rot_{n}", ((3, 3),), required=False)
            rvec = _mat(fe, extri, n, f"R_{n}", (3,), required=False)
            if rot is None and rvec is None:
                raise RigError(f"{extri}: camera '{n}': field 'Rot_{n}' (3x3) or 'R_{n}' (Rodrigues 3x1) is missing")
            if rot is not None and not _is_rotation(rot):
                raise RigError(
                    f"{extri}: camera '{n}': field 'Rot_{n}' is not a rotation matrix "
                    f"(max |R R^T - I| = {float(np.abs(rot @ rot.T - np.eye(3)).max()):.2e}, "
                    f"det = {np.linalg.det(rot):.4f})"
                )
            if rvec is not None and not np.all(np.isfinite(rvec)):
                raise RigError(f"{extri}: camera '{n}': field 'R_{n}' contains NaN or infinite values")
            if rot is not None and rvec is not None:
                diff = rot.T @ rotvec_to_rotmat_np(rvec.reshape(3))
                angle = float(np.arccos(np.clip((np.trace(diff) - 1) / 2, -1, 1)))
                if angle > 1e-5:
                    raise RigError(
                        f"{extri}: camera '{n}': fields 'Rot_{n}' and 'R_{n}' disagree by "
                        f"{np.degrees(angle):.4f} deg; remove the wrong one"
                    )
            R = rot if rot is not None else rotvec_to_rotmat_np(rvec.reshape(3))
            T = _mat(fe, extri, n, f"T_{n}", (3,)).reshape(3)
            try:
                cams.append(Camera(n, K, dist, R, T, size))
            except RigError as exc:
                raise RigError(f"{intri.parent}: {exc}") from exc
    except cv2.error as exc:  # a file OpenCV parsed but whose layout is not a map of named entries
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise RigError(
            f"{intri.parent}: intri.yml/extri.yml are not EasyMocap rig files ({lines[-1][:200] if lines else exc})"
        ) from None
    finally:
        fi.release()
        fe.release()
    return Rig(tuple(cams))


def save_easymocap_rig(rig: Rig, path: str | Path) -> None:
    """Write EasyMocap ``intri.yml`` + ``extri.yml``.

    ``path``: a folder (created if needed) or an ``...intri...yml`` path (the extri file
    goes beside it). Writes ``names``, ``K_``, ``dist_`` (1x5), ``H_``/``W_``, and
    ``R_`` (Rodrigues 3x1), ``Rot_`` (3x3), ``T_`` (3x1, metres). Camera names must be
    usable in YAML keys: letters, digits, ``_`` and ``-``.
    """
    path = Path(path)
    if path.suffix.lower() in (".yml", ".yaml") and "intri" not in path.name and "extri" not in path.name:
        raise RigError(f"{path}: name the EasyMocap file intri.yml (extri.yml is written beside it) or pass a folder")
    if path.suffix == "" and not path.exists():
        path.mkdir(parents=True)
    intri, extri = _easymocap_paths(path)
    intri.parent.mkdir(parents=True, exist_ok=True)
    for cam in rig:
        if not _KEY_SAFE.match(cam.name):
            raise RigError(
                f"camera '{cam.name}': field 'name' cannot be used in OpenCV YAML keys (K_<name>); "
                "use letters, digits, '_' and '-' only (rename the camera)"
            )
    fi, fe = _open_fs(intri, "w"), _open_fs(extri, "w")
    try:
        for fs in (fi, fe):
            fs.startWriteStruct("names", _seq_flag())
            for cam in rig:
                fs.write("", cam.name)
            fs.endWriteStruct()
        for cam in rig:
            fi.write(f"K_{cam.name}", cam.K)
            fi.write(f"dist_{cam.name}", cam.dist.reshape(1, 5))
            fi.write(f"H_{cam.name}", int(cam.height))
            fi.write(f"W_{cam.name}", int(cam.width))
            fe.write(f"R_{cam.name}", rotmat_to_rotvec_np(cam.R_world2cam).reshape(3, 1))
            fe.write(f"Rot_{cam.name}", cam.R_world2cam)
            fe.write(f"T_{cam.name}", cam.t_world2cam.reshape(3, 1))
    finally:
        fi.release()
        fe.release()
    for p in (intri, extri):  # EasyMocap's files (and OpenCV < 4) use the "%YAML:1.0" header
        text = p.read_text()
        if text.startswith("%YAML 1."):
            p.write_text("%YAML:1.0" + text[len("%YAML 1.x") :])


def _seq_flag():
    import cv2

    return cv2.FileNode_SEQ


# ------------------------------------------------------------------------------------------
# XML helpers (Qualisys, Vicon)
# ------------------------------------------------------------------------------------------
def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise RigError(f"{path}: not valid XML ({exc})") from exc


def _iter_ci(elem: ET.Element, tag: str) -> list[ET.Element]:
    return [c for c in elem.iter() if c.tag.lower() == tag.lower()]


def _attrs_ci(elem: ET.Element) -> dict[str, str]:
    return {k.lower(): v for k, v in elem.attrib.items()}


def _floats(path, name, where, attrs, key, n=None) -> np.ndarray:
    if key.lower() not in attrs:
        raise RigError(f"{path}: camera '{name}': field '{where}{key}' is missing")
    try:
        vals = np.array([float(v) for v in attrs[key.lower()].replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        raise RigError(
            f"{path}: camera '{name}': field '{where}{key}' is not numeric: {attrs[key.lower()]!r}"
        ) from None
    if n is not None and vals.size != n:
        raise RigError(f"{path}: camera '{name}': field '{where}{key}' needs {n} value(s), got {vals.size}")
    if not np.all(np.isfinite(vals)):
        raise RigError(f"{path}: camera '{name}': field '{where}{key}' contains NaN or infinite values")
    return vals


def _float(path, name, where, attrs, key, default=None) -> float:
    if key.lower() not in attrs and default is not None:
        return float(default)
    return float(_floats(path, name, where, attrs, key, 1)[0])


# ------------------------------------------------------------------------------------------
# Qualisys .qca.txt
# ------------------------------------------------------------------------------------------
# Qualisys camera frame: looks along its -z axis, +y is image-up; OpenCV: +z forward, +y down.
_QTM_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def load_qualisys_rig(
    path: str | Path,
    image_size: tuple[int, int] | None = None,
    subpixel_factor: float | None = None,
    video_only: bool = True,
) -> Rig:
    """Read a Qualisys Track Manager calibration export (``.qca.txt``, XML; read only).

    Interpretation (the same as Pose2Sim's ``calib_qca_fun``, checked in
    ``tests/test_rigio.py`` against cameras built by hand), per ``<camera serial=...>``
    under ``<calibration><cameras>`` (tag names matched case-insensitively):

    * name: the ``serial`` attribute.
    * ``<transform x y z r11 ... r33>``: camera-to-world pose. ``(x, y, z)`` is the camera
      centre in world **millimetres** (converted to metres). The nine ``r`` values, read
      row by row as ``M = [[r11, r12, r13], [r21, r22, r23], [r31, r32, r33]]``, are the
      camera-to-world rotation stored column by column: ``M.T`` maps Qualisys-camera
      axes to world (rows of ``M`` are the camera's x, y, z axes in world coordinates).
      The Qualisys camera looks along its **-z** axis with +y image-up, so mvcap's
      world->camera rotation is ``R = diag(1, -1, -1) @ M`` and ``t = -R @ centre``.
    * ``<intrinsic>``: ``focalLengthU/V`` and ``centerPointU/V`` are in 1/64-pixel units
      (the subpixel factor: 64, or inferred as ``(sensorMaxU - sensorMinU + 1) /
      fov_video_max width`` when those are present, or ``subpixel_factor=``) and refer
      to the full sensor. ``fx = focalLengthU / 64``; ``cx = centerPointU / 64 -
      fov_video.left``, ``cy = centerPointV / 64 - fov_video.top``.
      Distortion ``radialDistortion1..3``, ``tangentalDistortion1..2`` are taken as
      OpenCV's k1, k2, k3, p1, p2 (unitless, *not* divided by 64; Pose2Sim divides them
      by 64, which makes real coefficients ~64x too small). Non-zero ``skew`` is refused.
    * image size: ``fov_video`` ``(right - left + 1) x (bottom - top + 1)`` pixels; if a
      camera has no ``fov_video``, ``image_size=`` is used (offsets 0).
    * ``video_only``: when some cameras' ``model`` mentions "video" (Miqus Video...), only
      those are kept (marker cameras record no video). File order is kept.

    Qualisys worlds are usually **Z-up** (mvcap does not rotate them). Cameras with
    ``viewrotation`` != 0 record rotated video: the rig describes the unrotated sensor
    image and a warning says so. Binned video (e.g. 540p from a 1080p field of view) is
    not detected: rescale with ``Rig.with_image_size``.
    """
    path = Path(path)
    root = _parse_xml(path)
    elems = _iter_ci(root, "camera")
    if not elems:
        raise RigError(f"{path}: no <camera> elements found (expected <calibration><cameras><camera ...>)")
    if video_only and any("video" in _attrs_ci(e).get("model", "").lower() for e in elems):
        elems = [e for e in elems if "video" in _attrs_ci(e).get("model", "").lower()]
    cams = []
    for i, elem in enumerate(elems):
        a = _attrs_ci(elem)
        name = a.get("serial") or a.get("name") or f"cam{i}"
        sub = {c.tag.lower(): _attrs_ci(c) for c in elem}
        for tag in ("transform", "intrinsic"):
            if tag not in sub:
                raise RigError(f"{path}: camera '{name}': field '<{tag}>' is missing")
        tr, it = sub["transform"], sub["intrinsic"]
        # extrinsics
        centre = np.array([_float(path, name, "transform.", tr, k) for k in "xyz"]) / 1000.0
        M = np.array([[_float(path, name, "transform.", tr, f"r{r}{c}") for c in (1, 2, 3)] for r in (1, 2, 3)])
        if not _is_rotation(M):
            raise RigError(
                f"{path}: camera '{name}': field 'transform r11..r33' is not a rotation matrix "
                f"(max |M M^T - I| = {float(np.abs(M @ M.T - np.eye(3)).max()):.2e}, det = {np.linalg.det(M):.4f})"
            )
        R = _QTM_TO_OPENCV @ M
        t = -R @ centre
        # subpixel factor
        s = subpixel_factor
        if s is not None and not (np.isfinite(s) and s > 0):
            raise RigError(f"{path}: subpixel_factor must be a positive number, got {s}")
        if s is None:
            s = 64.0
            fmax = sub.get("fov_video_max")
            if fmax is not None and "sensormaxu" in it and "sensorminu" in it:
                width_max = (
                    _float(path, name, "fov_video_max.", fmax, "right")
                    - _float(path, name, "fov_video_max.", fmax, "left")
                    + 1
                )
                sensor_u = (
                    _float(path, name, "intrinsic.", it, "sensorMaxU")
                    - _float(path, name, "intrinsic.", it, "sensorMinU")
                    + 1
                )
                ratio = sensor_u / width_max if width_max > 0 else float("nan")
                if ratio > 0.5 and abs(ratio - round(ratio)) < 0.01:
                    s = float(round(ratio))
                else:
                    warnings.warn(
                        f"{path}: camera '{name}': cannot infer the subpixel factor from sensorMin/MaxU and "
                        f"fov_video_max (ratio {ratio:.3f}); using 64",
                        RigConversionWarning,
                        stacklevel=2,
                    )
        # image size and field-of-view offsets
        fov = sub.get("fov_video")
        if fov is not None:
            left, top = _float(path, name, "fov_video.", fov, "left"), _float(path, name, "fov_video.", fov, "top")
            w = _float(path, name, "fov_video.", fov, "right") - left + 1
            h = _float(path, name, "fov_video.", fov, "bottom") - top + 1
            size = _size(path, name, "fov_video", (w, h))
            if image_size is not None:
                _check_size(path, name, "fov_video", size, image_size)
        elif image_size is not None:
            left = top = 0.0
            size = _size(path, name, "image_size", image_size)
        else:
            raise RigError(
                f"{path}: camera '{name}': field '<fov_video>' (image size and offsets) is missing; "
                "pass image_size=(width, height) (CLI: --image-size W H)"
            )
        skew = _float(path, name, "intrinsic.", it, "skew", default=0.0)
        if skew != 0:
            raise RigError(f"{path}: camera '{name}': field 'intrinsic.skew' = {skew}; mvcap supports zero skew only")
        fx = _float(path, name, "intrinsic.", it, "focalLengthU") / s
        fy = _float(path, name, "intrinsic.", it, "focalLengthV") / s
        if not (fx > 0 and fy > 0):
            raise RigError(
                f"{path}: camera '{name}': fields 'intrinsic.focalLengthU/V' must be positive, got {fx * s}, {fy * s}"
            )
        cx = _float(path, name, "intrinsic.", it, "centerPointU") / s - left
        cy = _float(path, name, "intrinsic.", it, "centerPointV") / s - top
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        k1, k2, k3 = (_float(path, name, "intrinsic.", it, f"radialDistortion{j}", default=0.0) for j in (1, 2, 3))
        p1, p2 = (_float(path, name, "intrinsic.", it, f"tangentalDistortion{j}", default=0.0) for j in (1, 2))
        rot = a.get("viewrotation", "0").strip()
        if rot not in ("", "0"):
            warnings.warn(
                f"{path}: camera '{name}' has viewrotation={rot}: its video is rotated, but this rig "
                "describes the unrotated sensor image",
                RigConversionWarning,
                stacklevel=2,
            )
        try:
            cams.append(Camera(name, K, np.array([k1, k2, p1, p2, k3]), R, t, size))
        except RigError as exc:
            raise RigError(f"{path}: {exc}") from exc
    return Rig(tuple(cams))


# ------------------------------------------------------------------------------------------
# Vicon .xcp
# ------------------------------------------------------------------------------------------
def _quat_xyzw_to_rotmat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def vicon_radial_to_opencv(
    focal: float,
    aspect: float,
    principal_point: tuple[float, float],
    centre: tuple[float, float],
    coeffs: tuple[float, ...],
    image_size: tuple[int, int],
) -> tuple[np.ndarray, float]:
    """Refit Vicon's radial model as OpenCV ``(k1, k2, 0, 0, 0)``.

    Vicon's model (``VICON_RADIAL2 = "ThirdOrderRadial w0 w1 w2 w3 w4"``; older
    ``VICON_RADIAL = "w2 w3"`` with the centre at the principal point) *corrects* an
    observed (distorted) pixel ``(x, y)`` about the distortion centre ``(w0, w1)``::

        d = (x - w0, a (y - w1));  r2 = |d|^2 / f^2;  s = 1 + w2 r2 + w3 r2^2 + w4 r2^3
        undistorted = (w0 + s d_x, w1 + s d_y / a)

    (``a`` = PIXEL_ASPECT_RATIO, ``f`` = FOCAL_LENGTH; our assumption: the radius is
    normalised by the focal length, which makes the coefficients dimensionless and
    comparable to OpenCV's). OpenCV maps the other way (undistorted normalised ->
    distorted), about the principal point, so no exact conversion exists: k1, k2 are
    least-squares fitted on the radial profile out to the image corners.

    Returns (dist (5,), max_error_px): the largest distance, over a grid covering the
    image, between an observed pixel and OpenCV's re-distortion of its Vicon-corrected
    position (this includes the effect of the centre differing from the principal point).
    """
    w2, w3, w4 = (list(coeffs) + [0.0, 0.0, 0.0])[:3]
    W, H = image_size
    fx, fy = focal, focal / aspect
    cx, cy = principal_point
    w0, w1 = centre

    def vicon_correct(x, y):
        dx, dy = x - w0, aspect * (y - w1)
        r2 = (dx * dx + dy * dy) / (focal * focal)
        s = 1 + r2 * (w2 + r2 * (w3 + r2 * w4))
        return w0 + s * dx, w1 + s * dy / aspect

    # radial profile about the principal point, in normalised units
    corners = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [-0.5, H - 0.5], [W - 0.5, H - 0.5]])
    r_max = float(np.max(np.hypot((corners[:, 0] - cx) / fx, (corners[:, 1] - cy) / fy)))
    rd = np.linspace(0.0, r_max, 400)[1:]
    s = 1 + rd**2 * (w2 + rd**2 * (w3 + rd**2 * w4))
    ru = rd * s
    if not np.all(np.isfinite(ru)) or np.any(ru <= 0) or np.any(np.diff(ru) <= 0):
        raise RigError("the Vicon radial model is not monotonic over the image; cannot convert it to OpenCV")
    A = np.stack([ru**3, ru**5], axis=1)
    if not np.all(np.isfinite(A)):
        raise RigError("the Vicon radial model cannot be refitted as OpenCV k1, k2 (its coefficients are too large)")
    k1, k2 = np.linalg.lstsq(A, rd - ru, rcond=None)[0]
    dist = np.array([k1, k2, 0.0, 0.0, 0.0])
    if not np.all(np.isfinite(dist)):
        raise RigError("the Vicon radial model cannot be refitted as OpenCV k1, k2 (the fit is not finite)")
    # full 2-D check over the image
    gx, gy = np.meshgrid(np.linspace(-0.5, W - 0.5, 41), np.linspace(-0.5, H - 0.5, 41))
    ux, uy = vicon_correct(gx, gy)
    xn, yn = (ux - cx) / fx, (uy - cy) / fy
    r2 = xn * xn + yn * yn
    radial = 1 + r2 * (k1 + r2 * k2)
    err = np.hypot(fx * xn * radial + cx - gx, fy * yn * radial + cy - gy)
    err_max = float(err.max())
    if not np.isfinite(err_max):
        raise RigError("the Vicon radial model cannot be refitted as OpenCV k1, k2 (the refit error is not finite)")
    return dist, err_max


def load_vicon_rig(path: str | Path, image_size: tuple[int, int] | None = None, video_only: bool = True) -> Rig:
    """Read a Vicon calibration (``.xcp``, XML; read only).

    Interpretation (as Pose2Sim's ``calib_vicon_fun`` and OpenCap's Vicon reader), per
    ``<Camera DEVICEID SENSOR_SIZE PIXEL_ASPECT_RATIO SKEW ...>`` and its first
    ``<KeyFrames><KeyFrame>`` (a warning if there are more: moving cameras):

    * name: ``DEVICEID`` (else ``USERID``); image size: ``SENSOR_SIZE`` "w h" pixels.
    * ``ORIENTATION`` "x y z w" (scalar last): a unit quaternion whose rotation matrix is
      the **world -> camera** rotation (camera frame as OpenCV's: +z forward, +y down).
    * ``POSITION`` "x y z": camera centre in world **millimetres**; ``t = -R @ centre``.
    * ``FOCAL_LENGTH`` f (pixels): ``fx = f``, ``fy = f / PIXEL_ASPECT_RATIO``;
      ``PRINCIPAL_POINT`` "cx cy" pixels. Non-zero ``SKEW`` is refused.
    * distortion: ``VICON_RADIAL2`` / ``VICON_RADIAL`` refitted as OpenCV k1, k2 by
      :func:`vicon_radial_to_opencv` (Vicon's model corrects distorted pixels, OpenCV's
      distorts ideal ones, and Vicon's centre may differ from the principal point), with a
      :class:`RigConversionWarning` giving the largest pixel error of the refit.
    * ``video_only``: when some cameras' ``TYPE``/``DISPLAY_TYPE`` mention "video", only
      those are kept. Vicon worlds are usually **Z-up**.
    """
    path = Path(path)
    root = _parse_xml(path)
    elems = _iter_ci(root, "Camera")
    if not elems:
        raise RigError(f"{path}: no <Camera> elements found (expected <Cameras><Camera ...>)")

    def is_video(e):
        a = _attrs_ci(e)
        return "video" in (a.get("type", "") + " " + a.get("display_type", "")).lower()

    if video_only and any(is_video(e) for e in elems):
        elems = [e for e in elems if is_video(e)]
    cams = []
    for i, elem in enumerate(elems):
        a = _attrs_ci(elem)
        name = a.get("deviceid") or a.get("userid") or f"cam{i}"
        kfs = _iter_ci(elem, "KeyFrame")
        if not kfs:
            raise RigError(f"{path}: camera '{name}': field '<KeyFrames><KeyFrame>' is missing")
        if len(kfs) > 1:
            warnings.warn(
                f"{path}: camera '{name}' has {len(kfs)} key frames (a moving camera); using the first",
                RigConversionWarning,
                stacklevel=2,
            )
        k = _attrs_ci(kfs[0])
        size_f = _floats(path, name, "", a, "SENSOR_SIZE", 2)
        size = _size(path, name, "SENSOR_SIZE", size_f)
        if image_size is not None:
            _check_size(path, name, "SENSOR_SIZE", size, image_size)
        aspect = _float(path, name, "", a, "PIXEL_ASPECT_RATIO", default=1.0)
        if not aspect > 0:
            raise RigError(
                f"{path}: camera '{name}': field 'PIXEL_ASPECT_RATIO' must be positive, got {aspect} "
                "(1 for square pixels)"
            )
        skew = _float(path, name, "", a, "SKEW", default=0.0)
        if skew != 0:
            raise RigError(f"{path}: camera '{name}': field 'SKEW' = {skew}; mvcap supports zero skew only")
        f = _float(path, name, "KeyFrame.", k, "FOCAL_LENGTH")
        if not f > 0:
            raise RigError(f"{path}: camera '{name}': field 'KeyFrame.FOCAL_LENGTH' must be positive (pixels), got {f}")
        cx, cy = _floats(path, name, "KeyFrame.", k, "PRINCIPAL_POINT", 2)
        q = _floats(path, name, "KeyFrame.", k, "ORIENTATION", 4)
        if abs(np.linalg.norm(q) - 1) > 1e-3:
            raise RigError(
                f"{path}: camera '{name}': field 'KeyFrame.ORIENTATION' is not a unit quaternion "
                f"(norm {np.linalg.norm(q):.4f})"
            )
        R = _quat_xyzw_to_rotmat(q)
        centre = _floats(path, name, "KeyFrame.", k, "POSITION", 3) / 1000.0
        t = -R @ centre
        K = np.array([[f, 0.0, cx], [0.0, f / aspect, cy], [0.0, 0.0, 1.0]])
        if "vicon_radial2" in k:
            tokens = k["vicon_radial2"].split()
            if not tokens or tokens[0] != "ThirdOrderRadial":
                raise RigError(
                    f"{path}: camera '{name}': field 'KeyFrame.VICON_RADIAL2' has an unknown model "
                    f"{tokens[:1]}; supported: ThirdOrderRadial"
                )
            vals = _floats(path, name, "KeyFrame.", {"vicon_radial2": " ".join(tokens[1:])}, "VICON_RADIAL2")
            if vals.size < 3:
                raise RigError(
                    f"{path}: camera '{name}': field 'KeyFrame.VICON_RADIAL2' needs "
                    "'ThirdOrderRadial cx cy w2 [w3 [w4]]'"
                )
            centre_d, coeffs = (vals[0], vals[1]), tuple(vals[2:5])
        elif "vicon_radial" in k:
            centre_d, coeffs = (cx, cy), tuple(_floats(path, name, "KeyFrame.", k, "VICON_RADIAL"))
        else:
            centre_d, coeffs = (cx, cy), ()
        if any(c != 0 for c in coeffs):
            try:
                with np.errstate(all="ignore"):  # overflow in absurd coefficients: refused below
                    dist, err = vicon_radial_to_opencv(f, aspect, (cx, cy), centre_d, coeffs, size)
            except (RigError, np.linalg.LinAlgError) as exc:
                raise RigError(f"{path}: camera '{name}': field 'VICON_RADIAL2': {exc}") from exc
            off = float(np.hypot(centre_d[0] - cx, centre_d[1] - cy))
            warnings.warn(
                f"{path}: camera '{name}': Vicon radial distortion {list(coeffs)} refitted as OpenCV "
                f"k1={dist[0]:.6g}, k2={dist[1]:.6g} (approximate: largest error {err:.3f} px over the image"
                + (f"; Vicon's distortion centre is {off:.1f} px from the principal point" if off > 0 else "")
                + ")",
                RigConversionWarning,
                stacklevel=2,
            )
        else:
            dist = np.zeros(5)
        try:
            cams.append(Camera(name, K, dist, R, t, size))
        except RigError as exc:
            raise RigError(f"{path}: {exc}") from exc
    return Rig(tuple(cams))
