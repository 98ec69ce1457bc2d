"""Body poses: anatomical joint limits (the fit's limit prior), Euler conversions, the skeleton.

Pure functions (torch for the differentiable limit prior). The pose sampler, motion sequences
and regressor-like noise of the synthetic data live in :mod:`mvcap.motions`.

Conventions
-----------
* SMPL joint order and parents (24 joints, see :data:`JOINT_NAMES`, :data:`SMPL_PARENTS`).
  Joint rotations are *local* (relative to the parent) axis-angle vectors; the rest frames
  are world-aligned as in SMPL: body Y up, facing +Z, the body's left at +X (T-pose).
* **World frame of synthetic scenes: Y up, the floor is the plane y = 0.** A yaw is a
  rotation about +Y; yaw 0 faces +Z.
* Joint limits are boxes on per-joint **intrinsic Tait-Bryan Euler angles**. Each joint has
  its own axis order (:data:`EULER_ORDERS`, e.g. ``"XZY"`` means
  ``R = Rx(ax) @ Rz(az) @ Ry(ay)``); the angles themselves are always stored *by axis*
  ``(ax, ay, az)`` so a table row reads "range about X, about Y, about Z". The middle axis of
  every order is one with a small range, away from the +-90 deg gimbal singularity.
* Limits are written for the **left** side in the table; the right side is the mirror image
  (reflection x -> -x maps Euler angles (ax, ay, az) to (ax, -ay, -az)). Sign reminders
  (left side): hip flexion (thigh forward) is -X, knee flexion +X, ankle plantar-flexion
  (toes down) +X, spine forward flexion +X, shoulder: Y is the horizontal direction of the
  arm ("azimuth", -Y = forward) and Z its elevation (-90 deg = arm hanging down,
  +90 deg = arm up), elbow flexion (forearm forward) is -Y, wrist flexion (palm side) -Z.
* The pelvis (global orientation) is unlimited; its Euler order is ``"YXZ"`` (yaw, then
  forward pitch +X, then roll).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import roma
import torch
from torch import Tensor

__all__ = [
    "JOINT_NAMES",
    "SMPL_PARENTS",
    "EULER_ORDERS",
    "JOINT_LIMITS_DEG",
    "APPROX_REST_JOINTS",
    "limits_rad",
    "euler_to_rotvec",
    "rotvec_to_euler",
    "clamp_to_limits",
    "limit_violation",
    "rotmat_to_euler",
    "limit_violation_rotmats",
    "forward_kinematics",
]

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle",
    "R_ankle", "spine3", "L_foot", "R_foot", "neck", "L_collar", "R_collar", "head",
    "L_shoulder", "R_shoulder", "L_elbow", "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand",
)  # fmt: skip
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)  # fmt: skip
_IDX = {n: i for i, n in enumerate(JOINT_NAMES)}
NUM_JOINTS = 24

_INF = float("inf")
# Left-side / midline table: name -> (euler order, (lo,hi) about X, about Y, about Z), degrees.
_LIMIT_TABLE: dict[str, tuple[str, tuple, tuple, tuple]] = {
    "pelvis": ("YXZ", (-_INF, _INF), (-_INF, _INF), (-_INF, _INF)),
    "L_hip": ("XZY", (-125, 30), (-40, 40), (-30, 50)),  # flex -X, abduct +Z, rotate Y
    "spine1": ("XZY", (-20, 40), (-20, 20), (-20, 20)),
    "L_knee": ("XZY", (0, 150), (-10, 10), (-5, 5)),  # flexion only
    "spine2": ("XZY", (-15, 30), (-20, 20), (-15, 15)),
    "L_ankle": ("XZY", (-40, 55), (-20, 20), (-25, 25)),  # dorsi -X, plantar +X
    "spine3": ("XZY", (-15, 30), (-20, 20), (-15, 15)),
    "L_foot": ("XZY", (-40, 20), (-5, 5), (-5, 5)),  # toes up -X
    "neck": ("XZY", (-35, 45), (-45, 45), (-25, 25)),
    "L_collar": ("XYZ", (-15, 15), (-20, 15), (-10, 30)),  # shrug +Z
    "head": ("XZY", (-35, 35), (-45, 45), (-25, 25)),
    "L_shoulder": ("YXZ", (-80, 80), (-135, 50), (-95, 95)),  # twist X, azimuth Y, elev Z
    "L_elbow": ("YZX", (-75, 75), (-150, 0), (-10, 10)),  # flexion -Y
    "L_wrist": ("ZYX", (-40, 40), (-30, 30), (-75, 70)),  # flexion -Z, deviation Y
    "L_hand": ("ZYX", (-10, 10), (-10, 10), (-60, 15)),  # finger curl -Z
}


def _mirror_range(r):
    return (-r[1], -r[0])


def _build_tables():
    orders, lims = [], np.zeros((NUM_JOINTS, 3, 2))
    for j, name in enumerate(JOINT_NAMES):
        if name.startswith("R_"):
            order, rx, ry, rz = _LIMIT_TABLE["L_" + name[2:]]
            ry, rz = _mirror_range(ry), _mirror_range(rz)
        else:
            order, rx, ry, rz = _LIMIT_TABLE[name]
        orders.append(order)
        lims[j] = (rx, ry, rz)
    return tuple(orders), lims


#: Per-joint intrinsic Euler axis order (e.g. "XZY": R = Rx @ Rz @ Ry).
#: JOINT_LIMITS_DEG: (24, 3, 2) float, [joint, axis (X,Y,Z), (lo, hi)] in degrees; pelvis +-inf.
EULER_ORDERS, JOINT_LIMITS_DEG = _build_tables()
JOINT_LIMITS_DEG.setflags(write=False)

#: Rest joint positions of the embedded body model at mean shape (metres, pelvis at the
#: origin), for tests and plausibility checks that must not need the body model.
APPROX_REST_JOINTS = np.array([
    [0.0, 0.0, 0.0], [0.112, -0.011, -0.008], [-0.112, -0.011, -0.008], [0.0, 0.151, -0.024],
    [0.143, -0.401, 0.008], [-0.143, -0.401, 0.008], [0.0, 0.233, -0.025], [0.188, -0.836, -0.012],
    [-0.188, -0.836, -0.012], [0.0, 0.362, -0.043], [0.202, -0.886, 0.131], [-0.202, -0.886, 0.131],
    [0.0, 0.548, -0.013], [0.023, 0.473, 0.005], [-0.023, 0.473, 0.005], [0.0, 0.648, 0.021],
    [0.177, 0.451, 0.001], [-0.177, 0.451, 0.001], [0.44, 0.451, 0.001], [-0.44, 0.451, 0.001],
    [0.675, 0.451, 0.001], [-0.675, 0.451, 0.001], [0.763, 0.443, 0.008], [-0.763, 0.443, 0.008],
])  # fmt: skip
APPROX_REST_JOINTS.setflags(write=False)


def limits_rad(dtype=torch.float64, device="cpu") -> Tensor:
    """(24, 3, 2) joint limits in radians (pelvis +-inf)."""
    return torch.as_tensor(np.deg2rad(JOINT_LIMITS_DEG), dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------
# Euler angles (per-joint orders), torch, differentiable
# ------------------------------------------------------------------------------------------
_AX = {"X": 0, "Y": 1, "Z": 2}


def _order_groups():
    groups: dict[str, list[int]] = {}
    for j, o in enumerate(EULER_ORDERS):
        groups.setdefault(o, []).append(j)
    return {o: torch.tensor(js) for o, js in groups.items()}


_GROUPS = _order_groups()


def _axis_rotmat(axis: int, angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = [one, zero, zero, zero, c, -s, zero, s, c]
    elif axis == 1:
        rows = [c, zero, s, zero, one, zero, -s, zero, c]
    else:
        rows = [c, -s, zero, s, c, zero, zero, zero, one]
    return torch.stack(rows, -1).reshape(*angle.shape, 3, 3)


def _euler_to_rotmat_order(order: str, angles_xyz: Tensor) -> Tensor:
    """angles_xyz (..., 3) stored by axis -> R = R_a(.) R_b(.) R_c(.) for order 'abc'."""
    R = None
    for ch in order:
        a = _AX[ch]
        Ra = _axis_rotmat(a, angles_xyz[..., a])
        R = Ra if R is None else R @ Ra
    return R


def _rotmat_to_euler_order(order: str, R: Tensor, eps: float = 1e-7) -> Tensor:
    """Inverse of :func:`_euler_to_rotmat_order`; middle angle in [-pi/2, pi/2]."""
    i, j, k = (_AX[c] for c in order)
    s = 1.0 if (j - i) % 3 == 1 else -1.0  # parity of the permutation
    mid = torch.asin((s * R[..., i, k]).clamp(-1 + eps, 1 - eps))
    first = torch.atan2(-s * R[..., j, k], R[..., k, k])
    last = torch.atan2(-s * R[..., i, j], R[..., i, i])
    out = torch.empty(*R.shape[:-2], 3, dtype=R.dtype, device=R.device)
    out[..., i], out[..., j], out[..., k] = first, mid, last
    return out


def _as_t(x) -> tuple[Tensor, bool]:
    if isinstance(x, Tensor):
        return x, False
    return torch.as_tensor(np.asarray(x, dtype=np.float64)), True


def _check_pose(x, name="pose_rotvecs"):
    if x.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"{name} must have shape (..., 24, 3) (SMPL axis-angle per joint), got {tuple(x.shape)}")


def euler_to_rotvec(euler):
    """Per-joint Euler angles (..., 24, 3) radians, stored by axis -> rotvecs (..., 24, 3).

    numpy in -> numpy out (float64); torch in -> torch out (differentiable)."""
    e, was_np = _as_t(euler)
    _check_pose(e, "euler")
    R = torch.empty(*e.shape, 3, dtype=e.dtype, device=e.device)
    for order, js in _GROUPS.items():
        js = js.to(e.device)
        R[..., js, :, :] = _euler_to_rotmat_order(order, e[..., js, :])
    rv = roma.rotmat_to_rotvec(R)
    return rv.numpy() if was_np else rv


def rotvec_to_euler(pose_rotvecs):
    """Rotvecs (..., 24, 3) -> per-joint Euler angles (..., 24, 3) radians, stored by axis."""
    rv, was_np = _as_t(pose_rotvecs)
    _check_pose(rv)
    R = roma.rotvec_to_rotmat(rv)
    e = torch.empty_like(rv)
    for order, js in _GROUPS.items():
        js = js.to(rv.device)
        e[..., js, :] = _rotmat_to_euler_order(order, R[..., js, :, :])
    return e.numpy() if was_np else e


def clamp_to_limits(pose_rotvecs, margin_deg: float = 0.0):
    """Project every joint (except the pelvis) into its Euler box, shrunk by ``margin_deg``.

    pose_rotvecs: (..., 24, 3); numpy or torch (torch stays differentiable a.e.)."""
    rv, was_np = _as_t(pose_rotvecs)
    _check_pose(rv)
    e = rotvec_to_euler(rv)
    lim = limits_rad(rv.dtype, rv.device)
    m = math.radians(margin_deg)
    e = torch.maximum(torch.minimum(e, lim[..., 1] - m), lim[..., 0] + m)  # pelvis: +-inf
    out = euler_to_rotvec(e)
    out = torch.cat([rv[..., :1, :], out[..., 1:, :]], dim=-2)
    return out.numpy() if was_np else out


def limit_violation(pose_rotvecs: Tensor, reduce: bool = True) -> Tensor:
    """Differentiable joint-limit penalty: squared excess (radians^2) beyond the Euler box.

    pose_rotvecs: (..., 24, 3). Returns (...,) summed over joints and axes when ``reduce``,
    else (..., 24, 3). Zero inside the limits; the pelvis is never penalised. Usable as a
    fitting prior (gradients are finite everywhere except exactly at a gimbal singularity,
    which every joint's middle-axis range keeps far away)."""
    if not isinstance(pose_rotvecs, Tensor):
        pose_rotvecs = torch.as_tensor(np.asarray(pose_rotvecs, dtype=np.float64))
    _check_pose(pose_rotvecs)
    e = rotvec_to_euler(pose_rotvecs)
    lim = limits_rad(e.dtype, e.device)
    lo, hi = lim[..., 0], lim[..., 1]
    finite = torch.isfinite(lo)
    lo, hi = (
        torch.where(finite, lo, torch.zeros_like(lo)),
        torch.where(finite, hi, torch.zeros_like(hi)),
    )
    excess = torch.relu(e - hi) + torch.relu(lo - e)
    pen = torch.where(finite, excess, torch.zeros_like(excess)) ** 2
    return pen.sum(dim=(-1, -2)) if reduce else pen


def _euler_index_tables():
    """Per joint, the flat (row * 3 + col) entries of R that :func:`_rotmat_to_euler_order`
    reads, the permutation parity and where (first, mid, last) go in the by-axis output."""
    entries, sign, place = [], [], []
    for order in EULER_ORDERS:
        i, j, k = (_AX[c] for c in order)
        entries.append([3 * i + k, 3 * j + k, 3 * k + k, 3 * i + j, 3 * i + i])
        sign.append(1.0 if (j - i) % 3 == 1 else -1.0)
        inv = [0, 0, 0]
        inv[i], inv[j], inv[k] = 0, 1, 2  # by-axis slot a takes (first, mid, last)[inv[a]]
        place.append(inv)
    return torch.tensor(entries), torch.tensor(sign, dtype=torch.float64), torch.tensor(place)


_EULER_ENTRIES, _EULER_SIGN, _EULER_PLACE = _euler_index_tables()


def rotmat_to_euler(rotmats: Tensor, eps: float = 1e-7) -> Tensor:
    """Local joint rotation matrices (..., 24, 3, 3) -> per-joint Euler angles (..., 24, 3)
    radians, stored by axis; the same angles as :func:`rotvec_to_euler` without the rotvec
    round trip, all joints at once (a fit's regulariser evaluates this every closure)."""
    if rotmats.shape[-3:] != (NUM_JOINTS, 3, 3):
        raise ValueError(f"rotmats must have shape (..., 24, 3, 3), got {tuple(rotmats.shape)}")
    entries, s, place = _euler_tables(rotmats.dtype, rotmats.device)
    flat = rotmats.reshape(*rotmats.shape[:-2], 9)
    r_ik, r_jk, r_kk, r_ij, r_ii = flat.gather(-1, entries.expand(*flat.shape[:-1], 5)).unbind(-1)  # each (..., 24)
    mid = torch.asin((s * r_ik).clamp(-1 + eps, 1 - eps))
    first = torch.atan2(-s * r_jk, r_kk)
    last = torch.atan2(-s * r_ij, r_ii)
    ordered = torch.stack([first, mid, last], -1)  # (..., 24, 3) in the joint's axis order
    return ordered.gather(-1, place.expand(*ordered.shape))


_EULER_TABLES: dict = {}


def _euler_tables(dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """The Euler tables on ``device`` (sign in ``dtype``), cached: a fit reads them every closure."""
    key = (dtype, str(device))
    if key not in _EULER_TABLES:
        _EULER_TABLES[key] = (_EULER_ENTRIES.to(device), _EULER_SIGN.to(device, dtype), _EULER_PLACE.to(device))
    return _EULER_TABLES[key]


def limit_violation_rotmats(rotmats: Tensor, reduce: bool = True) -> Tensor:
    """:func:`limit_violation` from local joint rotation matrices (..., 24, 3, 3): the same
    penalty, (...,) or (..., 24, 3) unreduced, without converting to rotvecs first."""
    e = rotmat_to_euler(rotmats)
    lo, hi, finite = _finite_limits(e.dtype, e.device)
    pen = torch.where(finite, torch.relu(e - hi) + torch.relu(lo - e), torch.zeros_like(e)) ** 2
    return pen.sum(dim=(-1, -2)) if reduce else pen


_FINITE_LIMITS: dict = {}


def _finite_limits(dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """(lo, hi, finite), each (24, 3): the limits with the pelvis' infinities zeroed, cached."""
    key = (dtype, str(device))
    if key not in _FINITE_LIMITS:
        lim = limits_rad(dtype, device)
        finite = torch.isfinite(lim[..., 0])
        zero = torch.zeros_like(lim[..., 0])
        _FINITE_LIMITS[key] = (torch.where(finite, lim[..., 0], zero), torch.where(finite, lim[..., 1], zero), finite)
    return _FINITE_LIMITS[key]


# ------------------------------------------------------------------------------------------
# kinematics (for checks without the body model)
# ------------------------------------------------------------------------------------------
def forward_kinematics(pose_rotvecs, rest_joints=None, parents: Sequence[int] = SMPL_PARENTS, transl=None):
    """Posed joint positions (..., 24, 3) from local rotvecs (..., 24, 3) and rest joints (24, 3).

    Uses :data:`APPROX_REST_JOINTS` when ``rest_joints`` is None. numpy or torch."""
    rv, was_np = _as_t(pose_rotvecs)
    _check_pose(rv)
    rest = torch.as_tensor(np.array(APPROX_REST_JOINTS if rest_joints is None else rest_joints), dtype=rv.dtype)
    R = roma.rotvec_to_rotmat(rv)
    G_R = [R[..., 0, :, :]]
    G_t = [rest[0].expand(*rv.shape[:-2], 3)]
    for j in range(1, len(parents)):
        p = parents[j]
        G_R.append(G_R[p] @ R[..., j, :, :])
        G_t.append(G_t[p] + (G_R[p] @ (rest[j] - rest[p])[:, None])[..., 0])
    J = torch.stack(G_t, dim=-2)
    if transl is not None:
        J = J + torch.as_tensor(np.asarray(transl), dtype=J.dtype)[..., None, :]
    return J.numpy() if was_np else J
