import roma
import torch

from mvcap.fuse import (
    fuse_bodies,
    fuse_translations,
    rotation_average,
)


def test_rotation_average_of_noisy_copies_recovers_rotation():
    torch.manual_seed(0)
    R = roma.random_rotmat(5, dtype=torch.float64)  # 5 different rotations
    noise = roma.rotvec_to_rotmat(torch.randn(200, 5, 3, dtype=torch.float64) * 0.1)  # ~5.7 deg
    mean = rotation_average(noise @ R)
    err = roma.rotmat_geodesic_distance(mean, R)
    assert err.max() < torch.deg2rad(torch.tensor(1.5))
    assert torch.allclose(torch.linalg.det(mean), torch.ones(5, dtype=torch.float64))


def test_rotation_average_weights_and_reflection_safety():
    R = roma.random_rotmat(2, dtype=torch.float64)
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(rotation_average(R, w), R[0], atol=1e-9)
    # two opposite 180-degree-apart rotations average to something still in SO(3)
    a = roma.rotvec_to_rotmat(torch.tensor([[0, 0, 3.1], [0, 0, -3.1]], dtype=torch.float64))
    m = rotation_average(a)
    assert torch.allclose(m @ m.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
    assert torch.linalg.det(m) > 0


def test_ray_translation_fusion_removes_depth_errors():
    truth = torch.tensor([0.2, 0.9, -0.1], dtype=torch.float64)
    dirs = torch.tensor([[0, 0, -1.0], [-1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]], dtype=torch.float64)
    # each view is wrong by 10 cm only along its own optical axis
    est = truth + 0.1 * dirs * torch.tensor([1, -1, 1, 1.0], dtype=torch.float64)[:, None]
    ray = fuse_translations(est, dirs, depth_trust=1e-3)
    mean = fuse_translations(est)
    assert (ray - truth).norm() < 2e-3 < (mean - truth).norm()


def test_fuse_bodies_shapes():
    pose = torch.randn(3, 2, 24, 3) * 0.2
    transl = torch.randn(3, 2, 3)
    fused_pose, fused_t = fuse_bodies(pose, transl, torch.rand(3, 2, 24), torch.randn(3, 3), "ray")
    assert fused_pose.shape == (2, 24, 3) and fused_t.shape == (2, 3)
