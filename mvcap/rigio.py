"""Rig file formats.

Supported now: the anipose / Pose2Sim TOML layout (read and write), the one
``aniposelib.cameras.CameraGroup.load`` reads::

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

import tomllib
from pathlib import Path

import numpy as np

from mvcap.cameras import Camera, Rig, RigError, rotmat_to_rotvec_np, rotvec_to_rotmat_np

__all__ = ["load_rig", "save_rig", "load_toml_rig", "save_toml_rig", "RigError"]

_TOML_FIELDS = ("size", "matrix", "distortions", "rotation", "translation")


def load_rig(path: str | Path) -> Rig:
    """Load a rig file, choosing the format from its extension (.toml)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rig file not found: {path}")
    if path.suffix.lower() == ".toml":
        return load_toml_rig(path)
    raise RigError(f"unknown rig file format '{path.suffix}' for {path}; supported: .toml (anipose/Pose2Sim)")


def save_rig(rig: Rig, path: str | Path) -> None:
    path = Path(path)
    if path.suffix.lower() == ".toml":
        return save_toml_rig(rig, path)
    raise RigError(f"unknown rig file format '{path.suffix}' for {path}; supported: .toml (anipose/Pose2Sim)")


def load_toml_rig(path: str | Path) -> Rig:
    """Read an anipose/Pose2Sim calibration TOML. Errors name the section and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RigError(f"{path}: not valid TOML ({exc})") from exc
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
            R = rotvec_to_rotmat_np(rotation) if rotation.size == 3 else rotation.reshape(3, 3)
            cams.append(
                Camera(
                    name=name,
                    K=np.asarray(entry["matrix"], dtype=np.float64),
                    dist=np.asarray(entry["distortions"], dtype=np.float64),
                    R_world2cam=R,
                    t_world2cam=np.asarray(entry["translation"], dtype=np.float64),
                    image_size=tuple(entry["size"]),
                )
            )
        except RigError as exc:
            raise RigError(f"{path}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise RigError(f"{path}: camera '{name}' (section [{section}]) has a malformed value: {exc}") from exc
    if not cams:
        raise RigError(f"{path}: no camera sections found (expected [cam_0], [cam_1], ...)")
    return Rig(tuple(cams))


def _fmt(x) -> str:
    if isinstance(x, str):
        return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(x, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x))


def save_toml_rig(rig: Rig, path: str | Path) -> None:
    """Write the anipose/Pose2Sim TOML layout (float64 values written exactly)."""
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
    lines += ["[metadata]", 'written_by = "mvcap"', ""]
    Path(path).write_text("\n".join(lines))
