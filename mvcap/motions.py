"""Synthetic body motion: the anatomical pose sampler, motion sequences, regressor-like noise.

Used by the synthetic studio (:mod:`mvcap.synth`), the network's training data
(:mod:`mvcap.nets.data`) and the fit's shipped pose prior. Conventions (SMPL joints, local
axis-angle, Y-up world with the floor at y = 0, per-joint Euler limits) are those of
:mod:`mvcap.poses`; every sampled pose stays inside its joint limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import roma
import torch

from mvcap.poses import (
    JOINT_LIMITS_DEG,
    JOINT_NAMES,
    NUM_JOINTS,
    SMPL_PARENTS,
    _check_pose,
    clamp_to_limits,
    euler_to_rotvec,
    forward_kinematics,
)

__all__ = [
    "ARCHETYPE_NAMES",
    "sample_poses",
    "motion_sequence",
    "MOTION_KINDS",
    "PerturbConfig",
    "perturb_like_regressor",
    "place_on_floor",
]

_IDX = {n: i for i, n in enumerate(JOINT_NAMES)}


# ------------------------------------------------------------------------------------------
# pose archetypes (Euler degrees, anatomical: right-side entries are given like the left
# side and mirrored). Keys: joint names, or a name without the L_/R_ prefix for both sides.
# "pelvis" holds (pitch forward +X, 0, roll Z); yaw is sampled separately.
# ------------------------------------------------------------------------------------------
_RELAXED_ARMS = {
    "shoulder": (0, -5, -72),
    "elbow": (0, -12, 0),
    "wrist": (0, 0, -5),
    "hand": (0, 0, -15),
}
_ARCHETYPES: dict[str, dict] = {
    "stand": {**_RELAXED_ARMS, "hip": (-2, 0, 3), "knee": (4, 0, 0)},
    "stand_weight_shift": {
        **_RELAXED_ARMS,
        "pelvis": (0, 0, 6),
        "L_hip": (-2, 0, -6),
        "R_hip": (-8, 5, 12),
        "R_knee": (14, 0, 0),
        "spine1": (0, 0, -5),
        "spine2": (0, 0, -3),
        "neck": (0, 0, 5),
    },
    "a_pose": {"shoulder": (0, 0, -45), "elbow": (0, -5, 0), "hip": (0, 0, 5)},
    "t_pose": {"shoulder": (0, 0, 0), "elbow": (0, 0, 0), "hip": (0, 0, 2)},
    "walk_stride": {
        "pelvis": (4, 0, 0),
        "L_hip": (-28, 0, 2),
        "L_knee": (12, 0, 0),
        "L_ankle": (-5, 0, 0),
        "R_hip": (14, 0, 2),
        "R_knee": (25, 0, 0),
        "R_ankle": (18, 0, 0),
        "L_shoulder": (0, 25, -74),
        "R_shoulder": (0, -25, -74),
        "L_elbow": (0, -15, 0),
        "R_elbow": (0, -35, 0),
        "spine2": (0, 6, 0),
        "hand": (0, 0, -15),
    },
    "squat": {
        "pelvis": (25, 0, 0),
        "hip": (-105, 0, 18),
        "knee": (115, 0, 0),
        "ankle": (-33, 0, 0),
        "spine1": (15, 0, 0),
        "spine2": (8, 0, 0),
        "neck": (-15, 0, 0),
        "shoulder": (0, -80, -15),
        "elbow": (0, -10, 0),
    },
    "crouch": {
        "pelvis": (18, 0, 0),
        "hip": (-62, 0, 10),
        "knee": (75, 0, 0),
        "ankle": (-30, 0, 0),
        "spine1": (12, 0, 0),
        "spine2": (6, 0, 0),
        "shoulder": (0, -45, -55),
        "elbow": (0, -40, 0),
    },
    "reach_up": {
        **_RELAXED_ARMS,
        "L_collar": (0, 0, 20),
        "L_shoulder": (0, -15, 78),
        "L_elbow": (0, -8, 0),
        "spine1": (0, 0, 6),
        "spine2": (0, 0, 6),
        "neck": (-15, 0, 0),
        "head": (-10, 0, 0),
    },
    "reach_up_both": {
        "collar": (0, 0, 18),
        "shoulder": (0, -20, 75),
        "elbow": (0, -10, 0),
        "neck": (-10, 0, 0),
        "ankle": (15, 0, 0),
    },
    "reach_forward": {
        **_RELAXED_ARMS,
        "shoulder": (0, -85, -8),
        "elbow": (0, -10, 0),
        "spine1": (12, 0, 0),
        "spine2": (6, 0, 0),
        "hip": (-12, 0, 2),
    },
    "reach_forward_one": {
        **_RELAXED_ARMS,
        "L_shoulder": (0, -80, 5),
        "L_elbow": (0, -5, 0),
        "L_collar": (0, -12, 5),
        "spine1": (12, -8, 0),
        "spine2": (8, -8, 0),
        "L_hip": (-35, 0, 5),
        "L_knee": (30, 0, 0),
        "R_hip": (5, 0, 3),
    },
    "reach_side": {
        **_RELAXED_ARMS,
        "L_shoulder": (0, -10, 5),
        "L_elbow": (0, -5, 0),
        "L_collar": (0, 0, 8),
        "spine1": (0, 0, -12),
        "spine2": (0, 0, -8),
        "L_hip": (0, 0, 20),
        "R_hip": (0, 0, 6),
        "R_knee": (15, 0, 0),
        "head": (0, 20, 0),
    },
    "arms_crossed": {
        "shoulder": (-20, -50, -62),
        "elbow": (0, -115, 0),
        "wrist": (0, 0, 10),
        "hip": (-2, 0, 4),
    },
    "hands_on_hips": {
        "shoulder": (-10, 20, -55),
        "elbow": (0, -95, 0),
        "wrist": (0, 0, 20),
        "hip": (-2, 0, 6),
    },
    "guard": {
        "shoulder": (-30, -40, -60),
        "elbow": (0, -125, 0),
        "L_hip": (-20, 0, 10),
        "L_knee": (25, 0, 0),
        "R_hip": (5, 0, 8),
        "R_knee": (20, 0, 0),
        "spine1": (8, 15, 0),
    },
    "lunge": {
        "pelvis": (5, 0, 0),
        "L_hip": (-80, 0, 6),
        "L_knee": (85, 0, 0),
        "L_ankle": (-12, 0, 0),
        "R_hip": (22, 0, 6),
        "R_knee": (70, 0, 0),
        "R_ankle": (35, 0, 0),
        "R_foot": (-30, 0, 0),
        **{k: v for k, v in _RELAXED_ARMS.items()},
    },
    "bend_forward": {
        "pelvis": (50, 0, 0),
        "hip": (-48, 0, 5),
        "knee": (8, 0, 0),
        "spine1": (15, 0, 0),
        "spine2": (10, 0, 0),
        "spine3": (5, 0, 0),
        "neck": (-15, 0, 0),
        "shoulder": (0, -60, -75),
        "elbow": (0, -10, 0),
    },
    "sit_like": {
        "hip": (-88, 0, 8),
        "knee": (88, 0, 0),
        "ankle": (0, 0, 0),
        "spine1": (6, 0, 0),
        "shoulder": (0, -30, -68),
        "elbow": (0, -65, 0),
    },
    "star": {"shoulder": (0, 0, 40), "elbow": (0, -5, 0), "hip": (0, 0, 25), "collar": (0, 0, 10)},
    "look_around": {
        **_RELAXED_ARMS,
        "neck": (5, 35, 0),
        "head": (0, 25, 5),
        "spine2": (0, 12, 0),
        "spine3": (0, 8, 0),
        "hip": (-2, 0, 4),
    },
    "point": {
        **_RELAXED_ARMS,
        "L_shoulder": (0, -45, 10),
        "L_elbow": (0, -5, 0),
        "L_wrist": (0, 0, 10),
        "spine2": (0, -12, 0),
        "neck": (0, -25, 0),
    },
    "kick_prep": {
        **_RELAXED_ARMS,
        "L_hip": (-60, 0, 5),
        "L_knee": (90, 0, 0),
        "R_knee": (8, 0, 0),
        "shoulder": (0, -20, -50),
        "elbow": (0, -40, 0),
    },
}
ARCHETYPE_NAMES = tuple(_ARCHETYPES)
# archetypes whose upper body / lower body can be recombined freely
_LOWER = ("pelvis", "L_hip", "R_hip", "L_knee", "R_knee", "L_ankle", "R_ankle", "L_foot", "R_foot")
_LOWER_IDX = np.array([_IDX[n] for n in _LOWER])
_SIDE_FLIP = np.array(
    [_IDX[("R_" + n[2:]) if n.startswith("L_") else ("L_" + n[2:]) if n.startswith("R_") else n] for n in JOINT_NAMES]
)


def _archetype_euler_deg(spec: dict) -> np.ndarray:
    """Archetype spec -> (24, 3) Euler degrees in the model's (left/right mirrored) convention."""
    e = np.zeros((NUM_JOINTS, 3))
    for key, val in spec.items():
        names = [key] if key in _IDX else ["L_" + key, "R_" + key]
        for n in names:
            e[_IDX[n]] = val
    return _mirror_right(e)


def _mirror_right(e_anat: np.ndarray) -> np.ndarray:
    """Anatomical (left-like) angles -> model angles: negate Y and Z on right joints."""
    out = np.array(e_anat, dtype=np.float64, copy=True)
    right = np.array([n.startswith("R_") for n in JOINT_NAMES])
    out[..., right, 1:] *= -1
    return out


def _swap_sides(e_model: np.ndarray) -> np.ndarray:
    """Mirror a pose left<->right (model-convention Euler angles (..., 24, 3))."""
    out = e_model[..., _SIDE_FLIP, :].copy()
    out[..., 1:] *= -1  # reflection x -> -x: (ax, ay, az) -> (ax, -ay, -az)
    return out


_ARCH_E = {k: _archetype_euler_deg(v) for k, v in _ARCHETYPES.items()}


def _clip_euler_deg(e_deg: np.ndarray, margin_deg: float = 1.0) -> np.ndarray:
    lo, hi = JOINT_LIMITS_DEG[..., 0] + margin_deg, JOINT_LIMITS_DEG[..., 1] - margin_deg
    out = np.clip(e_deg, lo, hi)
    out[..., 0, :] = e_deg[..., 0, :]  # pelvis unlimited
    return out


def _noise_std_deg(scale: float = 1.0) -> np.ndarray:
    width = JOINT_LIMITS_DEG[..., 1] - JOINT_LIMITS_DEG[..., 0]
    width = np.where(np.isfinite(width), width, 0.0)
    return scale * np.minimum(0.07 * width, 9.0)


# plausibility: keep hands/forearms out of the torso and the legs apart (approximate skeleton)
def _implausible(e_deg: np.ndarray) -> np.ndarray:
    """(n, 24, 3) Euler degrees (pelvis orientation ignored) -> (n,) bool."""
    e = np.deg2rad(e_deg).copy()
    e[:, 0] = 0.0
    J = forward_kinematics(euler_to_rotvec(e))
    spine = J[:, [0, 3, 6, 9, 12]]  # torso axis polyline

    def seg_dist(p, a, b):
        ab = b - a
        t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
        return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)

    bad = np.zeros(len(e), bool)
    for j in (18, 19, 20, 21, 22, 23):  # elbows, wrists, hands vs torso capsule
        d = np.min([seg_dist(J[:, j], spine[:, k], spine[:, k + 1]) for k in range(4)], axis=0)
        bad |= d < 0.12
    for a, b in ((4, 5), (7, 8), (10, 11)):  # knees/ankles/feet not crossing
        bad |= np.linalg.norm(J[:, a] - J[:, b], axis=-1) < 0.1
    bad |= (J[:, 7] - J[:, 8])[:, 0] < -0.05  # left ankle clearly right of the right ankle
    return bad


def _sample_euler_deg(rng: np.random.Generator, n: int, style: str) -> np.ndarray:
    names = ARCHETYPE_NAMES
    if style == "varied":
        probs = np.ones(len(names))
        noise_scale, blend_p, mix_p = 1.0, 0.5, 0.35
    elif style == "mild":
        mild = {
            "stand",
            "stand_weight_shift",
            "a_pose",
            "walk_stride",
            "reach_forward",
            "point",
            "look_around",
            "hands_on_hips",
            "reach_up",
        }
        probs = np.array([1.0 if k in mild else 0.0 for k in names])
        noise_scale, blend_p, mix_p = 0.6, 0.5, 0.0
    else:
        raise ValueError(f"style must be 'varied' or 'mild', got {style!r}")
    probs = probs / probs.sum()
    out = np.zeros((n, NUM_JOINTS, 3))
    for i in range(n):
        a = _ARCH_E[names[rng.choice(len(names), p=probs)]]
        if rng.random() < 0.5:
            a = _swap_sides(a)
        if rng.random() < blend_p:
            b = _ARCH_E[names[rng.choice(len(names), p=probs)]]
            if rng.random() < 0.5:
                b = _swap_sides(b)
            w = rng.uniform(0.0, 1.0)
            a = (1 - w) * a + w * b
        if rng.random() < mix_p:  # lower body from another archetype
            c = _ARCH_E[names[rng.choice(len(names), p=probs)]]
            a = a.copy()
            a[_LOWER_IDX] = c[_LOWER_IDX]
        out[i] = a
    noise = rng.standard_normal(out.shape) * _noise_std_deg(noise_scale)
    out = _clip_euler_deg(out + noise)
    return out


def sample_poses(
    rng: np.random.Generator,
    n: int,
    style: str = "varied",
    tilt_deg: float = 5.0,
    max_tries: int = 20,
) -> np.ndarray:
    """Plausible whole-body poses. Returns (n, 24, 3) float64 axis-angle (local, SMPL order).

    A mix of archetypes (standing variants, walking stride, squat/crouch, reaching up/forward/
    sideways, arms crossed, hands on hips, lunges, bending forward, sitting-like, T/A-pose,
    ...), randomly mirrored left/right, blended and recombined (upper/lower body), plus
    per-joint noise, clipped 1 deg inside :data:`JOINT_LIMITS_DEG`. Samples whose hands or
    elbows fall inside the torso or whose legs cross (checked on an approximate skeleton)
    are redrawn. The global orientation is a uniform random yaw (any direction about +Y)
    with a small random tilt (``tilt_deg`` std) on top of the archetype's own pelvis pitch.
    ``style``: "varied" (all archetypes) or "mild" (standing/walking/reaching only).
    Deterministic given ``rng``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    e = _sample_euler_deg(rng, n, style)
    for _ in range(max_tries):
        bad = np.flatnonzero(_implausible(e)) if n else np.zeros(0, int)
        if bad.size == 0:
            break
        e[bad] = _sample_euler_deg(rng, bad.size, style)
    yaw = rng.uniform(-180.0, 180.0, size=n)
    tilt = rng.standard_normal((n, 2)) * tilt_deg
    e[:, 0, 0] += tilt[:, 0]
    e[:, 0, 2] += tilt[:, 1]
    e[:, 0, 1] = yaw
    return euler_to_rotvec(np.deg2rad(e))


# ------------------------------------------------------------------------------------------
# motion sequences
# ------------------------------------------------------------------------------------------
MOTION_KINDS = ("walk", "squat", "reach", "turn", "mixed")


def _bump(phase: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Smooth periodic bump in [0, 1] peaking at ``centre`` (fraction of the cycle)."""
    return np.exp((np.cos(phase - 2 * np.pi * centre) - 1) / width**2)


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _stand_deg(rng) -> np.ndarray:
    e = _ARCH_E["stand"] + rng.standard_normal((NUM_JOINTS, 3)) * _noise_std_deg(0.3)
    e[0] = 0
    return e


def _walk(T, fps, rng, yaw0, xz0):
    t = np.arange(T) / fps
    f = rng.uniform(0.8, 1.0)  # gait cycles per second
    stride = rng.uniform(0.9, 1.3)  # metres per cycle
    v = f * stride
    radius = rng.uniform(0.8, 1.5) * rng.choice([-1, 1])  # signed path radius (studio circle)
    heading = yaw0 + v * t / radius
    # integrate the path
    dx, dz = np.sin(heading) * v / fps, np.cos(heading) * v / fps
    x = xz0[0] + np.concatenate([[0], np.cumsum(dx)[:-1]])
    z = xz0[1] + np.concatenate([[0], np.cumsum(dz)[:-1]])
    phi = 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
    base = _mirror_right(_stand_deg(rng))  # anatomical (left-like) angles
    e = np.repeat(base[None], T, 0)
    for side, ph in (("L", phi), ("R", phi + np.pi)):
        # anatomical (left-like) angles, mirrored below
        e[:, _IDX[side + "_hip"], 0] = -(10 + 20 * np.cos(ph))
        e[:, _IDX[side + "_knee"], 0] = 5 + 12 * _bump(ph, 0.12, 0.45) + 55 * _bump(ph, 0.72, 0.65)
        e[:, _IDX[side + "_ankle"], 0] = 4 * _bump(ph, 0.05, 0.4) - 10 * _bump(ph, 0.4, 0.5) + 18 * _bump(ph, 0.62, 0.4)
        e[:, _IDX[side + "_shoulder"], 1] = 18 * np.cos(ph)
        e[:, _IDX[side + "_shoulder"], 2] = -74
        e[:, _IDX[side + "_elbow"], 1] = -(15 + 12 * (1 - np.cos(ph)) / 2)
    e = _mirror_right(e)  # back to model convention
    e[:, _IDX["spine2"], 1] = 5 * np.cos(phi)
    e[:, 0, 0] = 4
    e[:, 0, 2] = 3 * np.sin(phi)
    e[:, 0, 1] = np.rad2deg(heading) - 5 * np.cos(phi)
    transl = np.stack([x, np.zeros(T), z], -1)
    return e, transl


def _squat(T, fps, rng, yaw0, xz0):
    t = np.arange(T) / fps
    period = rng.uniform(2.2, 3.5)
    depth = rng.uniform(0.5, 1.0)
    s = depth * (1 - np.cos(2 * np.pi * t / period + rng.uniform(0, 0.5))) / 2
    a, b = _stand_deg(rng), _ARCH_E["squat"].copy()
    b[0] = 0
    b[0, 0] = 25
    e = a[None] * (1 - s[:, None, None]) + b[None] * s[:, None, None]
    e[:, 0, 1] = np.rad2deg(yaw0)
    transl = np.tile([xz0[0], 0.0, xz0[1]], (T, 1))
    return e, transl


def _keyframe_motion(T, fps, rng, keys_fn, hold_range=(0.7, 1.4)):
    """Interpolate keyframe poses (Euler degrees) with smooth easing."""
    times, keys = [0.0], [keys_fn(0)]
    while times[-1] < T / fps:
        times.append(times[-1] + rng.uniform(*hold_range))
        keys.append(keys_fn(len(keys)))
    times = np.array(times)
    t = np.arange(T) / fps
    k = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(keys) - 2)
    w = _smoothstep((t - times[k]) / (times[k + 1] - times[k]))[:, None, None]
    K = np.stack(keys)
    return K[k] * (1 - w) + K[k + 1] * w


def _reach(T, fps, rng, yaw0, xz0):
    stand = _stand_deg(rng)
    reach_names = (
        "reach_up",
        "reach_up_both",
        "reach_forward",
        "reach_forward_one",
        "reach_side",
        "point",
        "stand",
        "crouch",
        "look_around",
    )

    def key(i):
        if i == 0:
            return stand
        a = _ARCH_E[reach_names[rng.integers(len(reach_names))]]
        if rng.random() < 0.5:
            a = _swap_sides(a)
        w = rng.uniform(0.6, 1.0)
        e = stand * (1 - w) + a * w + rng.standard_normal(a.shape) * _noise_std_deg(0.5)
        e[0] = 0
        e[0, 0] = a[0, 0] * w
        return _clip_euler_deg(e)

    e = _keyframe_motion(T, fps, rng, key)
    e[:, 0, 1] = np.rad2deg(yaw0)
    transl = np.tile([xz0[0], 0.0, xz0[1]], (T, 1))
    return e, transl


def _turn(T, fps, rng, yaw0, xz0):
    t = np.arange(T) / fps
    dur = T / fps
    total = rng.uniform(90, 300) * rng.choice([-1, 1])
    speed_cap = 150.0  # deg/s
    total = np.sign(total) * min(abs(total), speed_cap * max(dur - 0.3, 0.3))
    s = _smoothstep(t / max(dur, 1e-6))
    yaw = np.rad2deg(yaw0) + total * s
    e = np.repeat(_mirror_right(_stand_deg(rng))[None], T, 0)  # anatomical
    step_f = rng.uniform(1.0, 1.4)
    ph = 2 * np.pi * step_f * t
    amp = np.sin(np.pi * np.clip(t / max(dur, 1e-6), 0, 1)) ** 0.5  # steps while turning
    for side, p in (("L", ph), ("R", ph + np.pi)):
        lift = np.maximum(np.sin(p), 0) ** 2 * amp
        e[:, _IDX[side + "_hip"], 0] = -(3 + 25 * lift)
        e[:, _IDX[side + "_knee"], 0] = 5 + 35 * lift
    e = _mirror_right(e)
    lead = np.gradient(yaw) * fps  # deg/s
    e[:, _IDX["neck"], 1] = np.clip(0.12 * lead, -30, 30)
    e[:, _IDX["spine3"], 1] = np.clip(0.05 * lead, -10, 10)
    e[:, 0, 1] = yaw
    transl = np.tile([xz0[0], 0.0, xz0[1]], (T, 1))
    return e, transl


_GEN = {"walk": _walk, "squat": _squat, "reach": _reach, "turn": _turn}


def _mixed(T, fps, rng, yaw0, xz0):
    segs_e, segs_t = [], []
    n, yaw, xz = 0, yaw0, np.array(xz0, float)
    blend = max(int(round(0.4 * fps)), 1)
    while n < T:
        L = int(round(rng.uniform(1.5, 3.0) * fps))
        kind = ("walk", "squat", "reach", "turn")[rng.integers(4)]
        e, tr = _GEN[kind](L, fps, rng, yaw, xz)
        if segs_e:  # crossfade from the held last frame of the previous segment
            w = _smoothstep((np.arange(L) + 1) / (blend + 1))[:, None]
            last_e, last_t = segs_e[-1][-1], segs_t[-1][-1]
            e = last_e[None] * (1 - w[..., None]) + e * w[..., None]
            tr = last_t[None] * (1 - w) + tr * w
        segs_e.append(e)
        segs_t.append(tr)
        n += L
        yaw = np.deg2rad(e[-1, 0, 1])
        xz = tr[-1, [0, 2]]
    return np.concatenate(segs_e)[:T], np.concatenate(segs_t)[:T]


_GEN["mixed"] = _mixed


def motion_sequence(
    kind: str,
    num_frames: int,
    fps: float,
    rng: np.random.Generator,
    start_yaw: float | None = None,
    start_xz=None,
):
    """A smooth motion. Returns ``(pose_rotvecs (T, 24, 3), transl (T, 3))`` float64 numpy.

    kind: "walk" (gait cycle along a gently curved path, 0.7-1.3 m/s), "squat" (down/up
    cycles), "reach" (eased keyframes of reaching/pointing/crouching), "turn" (turning on
    the spot with small steps), "mixed" (random segments of the above, crossfaded).
    ``transl`` is the root translation *relative to the floor contact*: x/z follow the path,
    y is 0. With ``start_xz`` None the path is centred on the origin (mean x/z = 0, what a
    capture volume wants); otherwise it starts at ``start_xz``. Put the body on the floor
    (Y-up world, floor y = 0) with :func:`place_on_floor`, which depends on the subject's
    shape (betas).
    All joints stay inside :data:`JOINT_LIMITS_DEG`. Deterministic given ``rng``."""
    if kind not in _GEN:
        raise ValueError(f"kind must be one of {MOTION_KINDS}, got {kind!r}")
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"need num_frames >= 1 and fps > 0, got {num_frames}, {fps}")
    yaw0 = rng.uniform(-np.pi, np.pi) if start_yaw is None else float(start_yaw)
    xz0 = np.zeros(2) if start_xz is None else np.asarray(start_xz, float)
    e, transl = _GEN[kind](num_frames, float(fps), rng, yaw0, xz0)
    if start_xz is None:
        transl[:, [0, 2]] -= transl[:, [0, 2]].mean(0)
    e = _clip_euler_deg(e, margin_deg=0.5)
    return euler_to_rotvec(np.deg2rad(e)), transl


# ------------------------------------------------------------------------------------------
# regressor-like initial estimates
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerturbConfig:
    """How initial estimates deviate from the truth (mimicking a regression network).

    joint_deg: (lo, hi) range of the per-joint local rotation error magnitude, degrees,
      drawn uniformly per joint and frame about a random axis. Applied to *local*
      rotations, so errors accumulate down the kinematic chain.
    bias_corr: 0..1 correlation of each joint's error axis across frames (a per-sequence
      bias, as regressors make consistent mistakes for one person/viewpoint).
    global_deg: magnitude of the global orientation error, degrees (random axis).
    transl_std_m: per-axis std of the root translation error, metres (isotropic ~6.5 cm
      mean norm at 0.04).
    depth_factor: multiplies the error along the camera's viewing axis when a camera is given.
    betas_std: std of Gaussian noise on the shape (0 = exact shape, as with a pre-registered
      subject).
    error_space: "local" (default, accumulates) or "global" (each joint's world rotation
      error is independent of its ancestors').
    clamp: project the perturbed pose back into the joint limits.
    """

    joint_deg: tuple[float, float] = (5.0, 15.0)
    bias_corr: float = 0.5
    global_deg: float = 5.0
    transl_std_m: float = 0.04
    depth_factor: float = 2.0
    betas_std: float = 0.0
    error_space: str = "local"
    clamp: bool = False


def _random_dirs(rng, shape):
    d = rng.standard_normal((*shape, 3))
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def perturb_like_regressor(
    rng: np.random.Generator,
    pose_rotvecs,
    transl,
    betas,
    parents: Sequence[int] = SMPL_PARENTS,
    cfg: PerturbConfig | None = None,
    R_world2cam=None,
):
    """Regressor-like initial estimates from ground truth.

    pose_rotvecs (T, 24, 3), transl (T, 3), betas (T, 10) or (10,) -> the same shapes,
    float64 numpy. ``R_world2cam`` (3, 3), optional: the camera the "regressor" looked
    through; the translation error is ``depth_factor`` times larger along its optical axis.
    See :class:`PerturbConfig` for the error model. Deterministic given ``rng``."""
    cfg = cfg or PerturbConfig()
    pose = np.asarray(pose_rotvecs, dtype=np.float64)
    transl = np.asarray(transl, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    _check_pose(pose)
    if pose.ndim != 3 or transl.shape != (pose.shape[0], 3):
        raise ValueError(f"need pose_rotvecs (T,24,3) and transl (T,3); got {pose.shape}, {transl.shape}")
    if len(parents) != NUM_JOINTS:
        raise ValueError(f"parents must have 24 entries, got {len(parents)}")
    if cfg.error_space not in ("local", "global"):
        raise ValueError(f"error_space must be 'local' or 'global', got {cfg.error_space!r}")
    T = pose.shape[0]
    lo, hi = cfg.joint_deg
    rho = float(np.clip(cfg.bias_corr, 0, 1))
    bias = rng.standard_normal((1, NUM_JOINTS - 1, 3))
    fresh = rng.standard_normal((T, NUM_JOINTS - 1, 3))
    d = rho * bias + math.sqrt(1 - rho**2) * fresh
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    mag = np.deg2rad(rng.uniform(lo, hi, size=(T, NUM_JOINTS - 1, 1)))
    err = torch.as_tensor(d * mag)
    g_err = torch.as_tensor(_random_dirs(rng, (T,)) * np.deg2rad(cfg.global_deg))

    P = torch.as_tensor(pose)
    R = roma.rotvec_to_rotmat(P)
    E = roma.rotvec_to_rotmat(err)
    if cfg.error_space == "local":
        R_new = R.clone()
        R_new[:, 1:] = R[:, 1:] @ E
    else:  # world-space error per joint, converted back to local rotations
        G = [R[:, 0]]
        for j in range(1, NUM_JOINTS):
            G.append(G[parents[j]] @ R[:, j])
        G_new = [G[0]] + [E[:, j - 1] @ G[j] for j in range(1, NUM_JOINTS)]
        R_new = R.clone()
        for j in range(1, NUM_JOINTS):
            R_new[:, j] = G_new[parents[j]].transpose(-1, -2) @ G_new[j]
    R_new[:, 0] = roma.rotvec_to_rotmat(g_err) @ R[:, 0]
    pose_out = roma.rotmat_to_rotvec(R_new).numpy()
    if cfg.clamp:
        pose_out = clamp_to_limits(pose_out)

    scale = np.full(3, cfg.transl_std_m)
    t_err = rng.standard_normal((T, 3))
    t_bias = rng.standard_normal((1, 3))
    t_err = (rho * t_bias + math.sqrt(1 - rho**2) * t_err) * scale
    if R_world2cam is not None:
        Rc = np.asarray(R_world2cam, dtype=np.float64).reshape(3, 3)
        t_cam = t_err @ Rc.T
        t_cam[:, 2] *= cfg.depth_factor
        t_err = t_cam @ Rc
    transl_out = transl + t_err
    betas_out = betas + rng.standard_normal(betas.shape) * cfg.betas_std if cfg.betas_std > 0 else betas.copy()
    return pose_out, transl_out, betas_out


# ------------------------------------------------------------------------------------------
# floor contact
# ------------------------------------------------------------------------------------------
def place_on_floor(model, pose_rotvecs, betas, transl, per_frame: bool = True):
    """Shift ``transl`` vertically so the lowest vertex touches the floor y = 0 (Y-up world).

    model: a :class:`mvcap.body.BodyModel`; pose_rotvecs (T, 24, 3), betas (T, 10) or (10,),
    transl (T, 3). ``per_frame=False`` applies one shift (the minimum over all frames) to the
    whole sequence instead of one per frame. Returns the new transl (T, 3), numpy float64."""
    pose = torch.as_tensor(np.asarray(pose_rotvecs, dtype=np.float64)).float()
    tr = np.asarray(transl, dtype=np.float64).reshape(-1, 3)
    b = torch.as_tensor(np.asarray(betas, dtype=np.float64)).float()
    if b.ndim == 1:
        b = b[None].expand(pose.shape[0], -1)
    with torch.no_grad():
        out = model(pose, b, torch.as_tensor(tr).float())
    miny = out.vertices[..., 1].min(dim=-1).values.double().numpy()
    tr = tr.copy()
    tr[:, 1] -= miny if per_frame else miny.min()
    return tr
