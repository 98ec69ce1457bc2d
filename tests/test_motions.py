"""Tests for mvcap.motions: the pose sampler, motion sequences, regressor-like perturbation."""

import numpy as np
import pytest
import roma
import torch

from mvcap import motions as M
from mvcap import poses as P


def _geodesic_deg(a, b):
    Ra = roma.rotvec_to_rotmat(torch.as_tensor(a))
    Rb = roma.rotvec_to_rotmat(torch.as_tensor(b))
    return np.rad2deg(roma.rotmat_geodesic_distance(Ra, Rb).numpy())


def test_sample_poses_within_limits_varied_and_deterministic():
    a = M.sample_poses(np.random.default_rng(3), 64)
    b = M.sample_poses(np.random.default_rng(3), 64)
    assert a.shape == (64, 24, 3)
    np.testing.assert_array_equal(a, b)
    assert P.limit_violation(torch.as_tensor(a)).max() < 1e-10
    body = a[:, 1:].reshape(64, -1)
    d = np.linalg.norm(body[:, None] - body[None], axis=-1)
    d = d[np.triu_indices(64, 1)]
    assert d.min() > 0.3  # no two poses nearly identical
    assert np.median(d) > 1.0
    # yaw covers all directions
    fwd = roma.rotvec_to_rotmat(torch.as_tensor(a[:, 0])).numpy()[:, :, 2]
    yaw = np.arctan2(fwd[:, 0], fwd[:, 2])
    assert np.histogram(yaw, bins=4, range=(-np.pi, np.pi))[0].min() >= 5
    # knees only flex; different seeds differ
    assert not np.allclose(a, M.sample_poses(np.random.default_rng(4), 64))
    assert M.sample_poses(np.random.default_rng(0), 8, style="mild").shape == (8, 24, 3)


@pytest.mark.parametrize("kind", M.MOTION_KINDS)
def test_motion_sequences_smooth_within_limits(kind):
    fps = 25.0
    pose, transl = M.motion_sequence(kind, 75, fps, np.random.default_rng(1))
    assert pose.shape == (75, 24, 3) and transl.shape == (75, 3)
    assert P.limit_violation(torch.as_tensor(pose)).max() < 1e-10
    step = _geodesic_deg(pose[1:], pose[:-1])  # (T-1, 24)
    # < 375 deg/s: real gait peaks at ~400 deg/s at the knee
    assert step.max() < 15.0, f"{kind}: max per-frame joint change {step.max():.1f} deg"
    assert np.linalg.norm(np.diff(transl, axis=0), axis=-1).max() < 0.08
    assert np.abs(transl[:, [0, 2]].mean(0)).max() < 1e-9  # centred on the capture area
    assert np.all(transl[:, 1] == 0)
    pose2, transl2 = M.motion_sequence(kind, 75, fps, np.random.default_rng(1))
    np.testing.assert_array_equal(pose, pose2)
    np.testing.assert_array_equal(transl, transl2)
    if kind in ("walk", "squat", "turn"):
        assert step.max() > 0.5  # it moves


def test_perturb_magnitudes_and_chain_accumulation():
    rng = np.random.default_rng(0)
    T = 200
    pose = M.sample_poses(rng, T)
    transl = np.zeros((T, 3))
    betas = np.zeros((T, 10))
    cfg = M.PerturbConfig(joint_deg=(5, 15), global_deg=5, transl_std_m=0.04)
    p2, t2, b2 = M.perturb_like_regressor(np.random.default_rng(1), pose, transl, betas, P.SMPL_PARENTS, cfg)
    ang = _geodesic_deg(p2, pose)
    assert ang[:, 1:].min() > 5 - 1e-6 and ang[:, 1:].max() < 15 + 1e-6
    np.testing.assert_allclose(ang[:, 0], 5.0, atol=1e-6)
    err = np.linalg.norm(t2 - transl, axis=-1).mean()
    assert 0.04 < err < 0.1
    np.testing.assert_array_equal(b2, betas)
    # deterministic
    again = M.perturb_like_regressor(np.random.default_rng(1), pose, transl, betas, P.SMPL_PARENTS, cfg)
    np.testing.assert_array_equal(again[0], p2)

    # errors accumulate down the chain (no global / translation error)
    cfg0 = M.PerturbConfig(joint_deg=(10, 10), global_deg=0, transl_std_m=0)
    p3, _, _ = M.perturb_like_regressor(np.random.default_rng(2), pose, transl, betas, P.SMPL_PARENTS, cfg0)
    J0, J1 = P.forward_kinematics(pose), P.forward_kinematics(p3)
    e = np.linalg.norm(J1 - J0, axis=-1).mean(0)
    idx = {n: i for i, n in enumerate(P.JOINT_NAMES)}
    for prox, dist in (
        ("L_knee", "L_ankle"),
        ("L_ankle", "L_foot"),
        ("L_elbow", "L_wrist"),
        ("R_shoulder", "R_elbow"),
        ("R_wrist", "R_hand"),
        ("spine2", "neck"),
    ):
        assert e[idx[dist]] > e[idx[prox]], (prox, dist, e[idx[prox]], e[idx[dist]])

    # a camera makes the translation error larger along its optical axis
    R = roma.rotvec_to_rotmat(torch.tensor([0.3, 1.0, 0.1], dtype=torch.float64)).numpy()
    _, t4, _ = M.perturb_like_regressor(
        np.random.default_rng(3),
        pose,
        transl,
        betas,
        P.SMPL_PARENTS,
        M.PerturbConfig(depth_factor=3.0, bias_corr=0.0),
        R_world2cam=R,
    )
    cam = t4 @ R.T
    assert cam[:, 2].std() > 2 * cam[:, :2].std(0).max()
    # noisy shape on request
    _, _, b5 = M.perturb_like_regressor(rng, pose, transl, betas, P.SMPL_PARENTS, M.PerturbConfig(betas_std=0.1))
    assert 0.05 < b5.std() < 0.2


def test_place_on_floor_with_body_model():
    body = pytest.importorskip("mvcap.body")
    try:
        model = body.load_body_model()
    except Exception as exc:  # model file not built
        pytest.skip(f"no body model: {exc}")
    pose, transl = M.motion_sequence("squat", 10, 25.0, np.random.default_rng(0))
    betas = np.zeros(10)
    tr = M.place_on_floor(model, pose, betas, transl)
    out = model(torch.as_tensor(pose).float(), torch.zeros(1, 10), torch.as_tensor(tr).float())
    np.testing.assert_allclose(out.vertices[..., 1].min(-1).values.numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(tr[:, [0, 2]], transl[:, [0, 2]])
