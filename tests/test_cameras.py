import cv2
import numpy as np
import pytest
import torch

from mvcap import demo
from mvcap.cameras import (
    Camera,
    Rig,
    RigError,
    pixel_rays,
    project,
    project_per_view,
    undistort_points,
)
from mvcap.rigio import load_rig, load_toml_rig, save_toml_rig

DEMO_RIG = str(demo.DEMO_RIG)


def random_rig(rng, n=3):
    cams = []
    for i in range(n):
        R, _ = cv2.Rodrigues(rng.normal(size=3) * 0.5)
        K = np.array(
            [
                [rng.uniform(400, 900), 0.0, rng.uniform(300, 340)],
                [0, rng.uniform(400, 900), rng.uniform(230, 250)],
                [0, 0, 1],
            ]
        )
        dist = np.array(
            [
                rng.uniform(-0.2, 0.2),
                rng.uniform(-0.05, 0.05),
                rng.uniform(-1e-3, 1e-3),
                rng.uniform(-1e-3, 1e-3),
                rng.uniform(-0.01, 0.01),
            ]
        )
        cams.append(Camera(f"c{i}", K, dist, R, np.array([0.1, -0.2, 4.0]) + rng.normal(size=3) * 0.1, (640, 480)))
    return Rig(tuple(cams))


def test_projection_matches_opencv():
    rng = np.random.default_rng(0)
    rig = random_rig(rng)
    pts = rng.normal(size=(200, 3)) * 0.6
    ours = project(rig, torch.as_tensor(pts, dtype=torch.float64)).numpy()  # (V, N, 2)
    for v, cam in enumerate(rig):
        ref, _ = cv2.projectPoints(pts, cv2.Rodrigues(cam.R_world2cam)[0], cam.t_world2cam, cam.K, cam.dist)
        assert np.abs(ours[v] - ref[:, 0]).max() < 1e-6


def test_batched_and_per_view_projection_agree():
    rig = load_rig(DEMO_RIG)
    pts = torch.randn(2, 5, 3, dtype=torch.float64) * 0.3
    batched = project(rig, pts)
    assert batched.shape == (2, len(rig), 5, 2)
    per_view = project_per_view(rig, pts[:, None].expand(2, len(rig), 5, 3))
    assert torch.allclose(batched, per_view)


def test_projection_is_differentiable():
    rig = load_rig(DEMO_RIG)
    pts = (torch.randn(10, 3, dtype=torch.float64) * 0.3).requires_grad_()
    project(rig, pts).sum().backward()
    assert torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0


def test_undistort_inverts_distortion_and_matches_opencv():
    rng = np.random.default_rng(1)
    rig = random_rig(rng)
    pts = torch.as_tensor(rng.normal(size=(50, 3)) * 0.5, dtype=torch.float64)
    distorted = project(rig, pts)
    pinhole = project(rig, pts, distort=False)
    assert (undistort_points(rig, distorted) - pinhole).abs().max() < 1e-6
    for v, cam in enumerate(rig):
        ref = cv2.undistortPoints(distorted[v].numpy()[:, None], cam.K, cam.dist, P=cam.K)[:, 0]
        assert np.abs(ref - pinhole[v].numpy()).max() < 1e-3


def test_pixel_rays_pass_through_points():
    rig = load_rig(DEMO_RIG)
    pts = torch.randn(20, 3, dtype=torch.float64) * 0.3 + torch.tensor([0, 1.0, 0], dtype=torch.float64)
    origins, dirs = pixel_rays(rig, project(rig, pts))
    to_pt = pts[None] - origins
    cross = torch.linalg.cross(to_pt, dirs)
    assert cross.norm(dim=-1).max() < 1e-6


def test_toml_round_trip(tmp_path):
    rig = random_rig(np.random.default_rng(2))
    save_toml_rig(rig, tmp_path / "rig.toml")
    back = load_toml_rig(tmp_path / "rig.toml")
    pts = torch.randn(30, 3, dtype=torch.float64) * 0.4  # in front of every camera
    assert (project(rig, pts) - project(back, pts)).abs().max() < 1e-6
    assert back.names == rig.names


def test_aniposelib_reads_what_we_write_and_we_read_what_it_writes(tmp_path):
    from aniposelib.cameras import CameraGroup

    rig = random_rig(np.random.default_rng(3))
    save_toml_rig(rig, tmp_path / "ours.toml")
    group = CameraGroup.load(str(tmp_path / "ours.toml"))
    pts = np.random.default_rng(4).normal(size=(40, 3)) * 0.5
    ref = group.project(pts)  # (V, N, 2) via cv2.projectPoints
    ours = project(rig, torch.as_tensor(pts)).numpy()
    assert np.abs(ref - ours).max() < 1e-6

    group.dump(str(tmp_path / "theirs.toml"))
    back = load_toml_rig(tmp_path / "theirs.toml")
    assert np.abs(project(back, torch.as_tensor(pts)).numpy() - ref).max() < 1e-6


def _write(tmp_path, text):
    p = tmp_path / "rig.toml"
    p.write_text(text)
    return p


GOOD = """[cam_0]
name = "left"
size = [640, 480]
matrix = [[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]]
distortions = [0.0, 0.0, 0.0, 0.0, 0.0]
rotation = [0.0, 0.0, 0.0]
translation = [0.0, 0.0, 3.0]
"""


def test_bad_rig_missing_field(tmp_path):
    p = _write(tmp_path, GOOD.replace("translation = [0.0, 0.0, 3.0]\n", ""))
    with pytest.raises(RigError, match=r"left.*translation"):
        load_rig(p)


def test_bad_rig_not_a_rotation(tmp_path):
    p = _write(
        tmp_path,
        GOOD.replace("rotation = [0.0, 0.0, 0.0]", "rotation = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]"),
    )
    with pytest.raises(RigError, match=r"left.*R_world2cam.*not a rotation"):
        load_rig(p)


def test_bad_rig_image_size(tmp_path):
    p = _write(tmp_path, GOOD.replace("size = [640, 480]", "size = [640]"))
    with pytest.raises(RigError, match=r"left.*image_size"):
        load_rig(p)


def test_duplicate_names_and_unknown_camera():
    rig = load_rig(DEMO_RIG)
    with pytest.raises(RigError, match="unique"):
        Rig((rig[0], rig[0]))
    with pytest.raises(RigError, match="no camera named 'nope'"):
        rig.index("nope")


def test_with_image_size_keeps_rays():
    rig = load_rig(DEMO_RIG).without_distortion()
    half = rig.with_image_size((256, 256))
    pts = torch.randn(10, 3, dtype=torch.float64) * 0.3
    full_px = project(rig, pts)
    half_px = project(half, pts)
    assert torch.allclose((half_px + 0.5) * 2, full_px + 0.5, atol=1e-9)


def test_a_cropped_rig_sees_its_box_at_the_new_size():
    rig = load_rig(DEMO_RIG).without_distortion()
    V = len(rig)
    boxes = np.array([[100, 50, 200, 300]] * V)
    sizes = np.array([[100, 150]] * V)  # half size
    crop = rig.cropped(boxes, sizes)
    pts = torch.tensor([[0.0, 1.0, 0.0], [0.2, 1.5, 0.1]], dtype=torch.float64)
    full, part = rig.project(pts, distort=False), crop.project(pts, distort=False)
    # pixel centres: u' + 0.5 = s (u - x0 + 0.5)
    expect = 0.5 * (full - torch.tensor([100.0, 50.0], dtype=torch.float64) + 0.5) - 0.5
    torch.testing.assert_close(part, expect)
    assert crop[0].image_size == (100, 150)
    with pytest.raises(ValueError, match="boxes must be"):
        rig.cropped(boxes[:1], sizes)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        rig.cropped(np.array([[0, 0, 0, 10]] * V), sizes)
