"""Tests for mvcap.poses: joint limits, Euler conversions, the limit prior."""

import numpy as np
import pytest
import roma
import torch

from mvcap import poses as P


def _geodesic_deg(a, b):
    Ra = roma.rotvec_to_rotmat(torch.as_tensor(a))
    Rb = roma.rotvec_to_rotmat(torch.as_tensor(b))
    return np.rad2deg(roma.rotmat_geodesic_distance(Ra, Rb).numpy())


def test_limit_table_shape_and_mirror():
    L = P.JOINT_LIMITS_DEG
    assert L.shape == (24, 3, 2)
    assert np.all(np.isinf(L[0]))
    assert np.all(L[1:, :, 0] < L[1:, :, 1])
    for j, name in enumerate(P.JOINT_NAMES):
        if name.startswith("L_"):
            r = P.JOINT_NAMES.index("R_" + name[2:])
            np.testing.assert_allclose(L[r, 0], L[j, 0])
            np.testing.assert_allclose(L[r, 1:], -L[j, 1:, ::-1])
    knee = P.JOINT_NAMES.index("L_knee")
    assert tuple(L[knee, 0]) == (0, 150)
    # left elbow flexes about -Y, right about +Y
    assert L[P.JOINT_NAMES.index("L_elbow"), 1, 1] == 0 and L[P.JOINT_NAMES.index("R_elbow"), 1, 0] == 0


def test_euler_round_trip():
    rng = np.random.default_rng(0)
    lim = np.deg2rad(np.clip(P.JOINT_LIMITS_DEG, -170, 170))
    e = rng.uniform(lim[..., 0], lim[..., 1], size=(50, 24, 3))
    e[:, 0] = rng.uniform(-1.2, 1.2, size=(50, 3))
    back = P.rotvec_to_euler(P.euler_to_rotvec(e))
    np.testing.assert_allclose(back, e, atol=1e-9)


def test_limit_violation_differentiable_and_clamp():
    pose = torch.zeros(3, 24, 3, dtype=torch.float64)
    knee = P.JOINT_NAMES.index("L_knee")
    pose[1, knee, 0] = -0.5  # hyperextended knee
    pose[2, P.JOINT_NAMES.index("L_elbow"), 1] = 1.0  # left elbow bent the wrong way
    pose.requires_grad_(True)
    v = P.limit_violation(pose)
    assert v[0].item() == 0.0 and v[1].item() == pytest.approx(0.25, rel=1e-6) and v[2] > 0.9
    v.sum().backward()
    assert torch.isfinite(pose.grad).all()
    assert pose.grad[1, knee, 0] < 0  # increasing the angle reduces the penalty
    clamped = P.clamp_to_limits(pose.detach())
    assert P.limit_violation(clamped).max() < 1e-12
    # numpy in, numpy out
    assert isinstance(P.clamp_to_limits(pose.detach().numpy()), np.ndarray)


def test_euler_and_limits_straight_from_rotation_matrices():
    rng = np.random.default_rng(3)
    rv = torch.as_tensor(rng.normal(scale=0.8, size=(20, 24, 3)))
    R = roma.rotvec_to_rotmat(rv)
    assert torch.allclose(P.rotmat_to_euler(R), P.rotvec_to_euler(rv), atol=1e-12)
    assert torch.allclose(P.limit_violation_rotmats(R), P.limit_violation(rv), atol=1e-12)
    assert torch.allclose(P.limit_violation_rotmats(R, reduce=False), P.limit_violation(rv, reduce=False), atol=1e-12)
    R.requires_grad_(True)
    P.limit_violation_rotmats(R).sum().backward()
    assert torch.isfinite(R.grad).all() and R.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(\.\.\., 24, 3, 3\)"):
        P.rotmat_to_euler(R[:, :23])
