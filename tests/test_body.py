"""Tests for mvcap.body on the embedded free body model (fast: a few seconds)."""

from __future__ import annotations

import copy
import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from mvcap.body import (
    ENV_VAR,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    BodyModel,
    BodyOutput,
    load_body_model,
    load_model_arrays,
)


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body_model()


def _edges_shared_by_two(faces: np.ndarray) -> bool:
    e = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool(np.all(counts == 2))


def _stature(vertices: torch.Tensor) -> float:
    y = vertices[..., 1]
    return float(y.max() - y.min())


def test_layout(body):
    assert body.joint_names == SMPL_JOINT_NAMES
    assert body.parents.tolist() == list(SMPL_PARENTS)
    assert body.num_betas == 10
    assert body.v_template.shape == (body.num_vertices, 3)
    assert body.uvs is not None and body.uv_faces.shape == body.faces.shape
    assert set(body.extra_vertex_ids) >= {"nose", "leye", "reye", "lear", "rear", "LHeel"}
    assert "Apache-2.0" in body.license and "CC0" in body.license


def test_left_is_plus_x_and_upright(body):
    j = body.rest_joints(torch.zeros(1, 10))[0]
    for name in ("hip", "knee", "ankle", "shoulder", "elbow", "wrist", "hand"):
        left, right = (
            SMPL_JOINT_NAMES.index(f"left_{name}"),
            SMPL_JOINT_NAMES.index(f"right_{name}"),
        )
        assert j[left, 0] > 0.05 and j[right, 0] < -0.05, name
    head, pelvis, ankle = j[15], j[0], j[7]
    assert head[1] > pelvis[1] > ankle[1]  # Y up
    # T-pose: arms horizontal at shoulder height
    assert abs(float(j[20, 1] - j[16, 1])) < 0.02
    # facing +Z: the nose and the toes are in front of the head/ankle joints
    v = body.template_vertices()[0]
    assert v[body.extra_vertex_ids["nose"], 2] > j[15, 2] + 0.05
    assert v[body.extra_vertex_ids["LBigToe"], 2] > j[7, 2] + 0.1


def test_right_elbow_bends_forward(body):
    pose = torch.zeros(1, 24, 3)
    pose[0, SMPL_JOINT_NAMES.index("right_elbow"), 1] = math.pi / 2  # about +Y
    out = body(pose)
    rest = body()
    elbow, wrist = SMPL_JOINT_NAMES.index("right_elbow"), SMPL_JOINT_NAMES.index("right_wrist")
    fore = out.joints[0, wrist] - out.joints[0, elbow]
    assert fore[2] > 0.9 * fore.norm()  # forearm points forward (+Z)
    assert torch.allclose(out.joints[0, elbow], rest.joints[0, elbow], atol=1e-5)
    # the left arm did not move
    left = SMPL_JOINT_NAMES.index("left_wrist")
    assert torch.allclose(out.joints[0, left], rest.joints[0, left], atol=1e-6)


def test_betas_change_stature(body):
    betas = torch.zeros(3, 10)
    betas[0, 0], betas[2, 0] = -2.0, 2.0
    v = body.template_vertices(betas)
    short, mean, tall = (_stature(v[i]) for i in range(3))
    assert 1.5 < mean < 1.9
    assert tall - mean > 0.2 and mean - short > 0.2


def test_posed_mesh_is_watertight(body):
    faces = body.faces.numpy()
    assert _edges_shared_by_two(faces)
    pose = torch.randn(2, 24, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    out = body(pose, torch.randn(2, 10) * 0.5, torch.tensor([[0.1, 0.2, 3.0]]))
    assert out.vertices.shape == (2, body.num_vertices, 3)
    assert torch.isfinite(out.vertices).all()
    # posing moves vertices but never changes connectivity; no face collapses to zero area
    tri = out.vertices[:, body.faces]
    area = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]).norm(dim=-1)
    assert float(area.min()) > 0


def test_gradients_flow(body):
    pose = (torch.randn(2, 24, 3) * 0.2).requires_grad_()
    betas = torch.zeros(2, 10, requires_grad=True)
    transl = torch.zeros(2, 3, requires_grad=True)
    out = body(pose, betas, transl)
    (out.vertices.square().sum() + out.joints.sum()).backward()
    for t in (pose, betas, transl):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_rotmats_and_rotvecs_agree(body):
    from smplx.lbs import batch_rodrigues

    pose = torch.randn(3, 24, 3, generator=torch.Generator().manual_seed(1)) * 0.4
    betas = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    a = body(pose, betas)
    b = body(rotmats=batch_rodrigues(pose.view(-1, 3)).view(3, 24, 3, 3), betas=betas)
    assert isinstance(a, BodyOutput)
    assert torch.allclose(a.vertices, b.vertices, atol=1e-5)
    assert torch.allclose(a.joints, b.joints, atol=1e-5)
    assert torch.allclose(a.rotmats_world, b.rotmats_world, atol=1e-6)


def test_transl_and_root_pivot(body):
    betas = torch.randn(1, 10)
    j0 = body.rest_joints(betas)[0, 0]
    pose = torch.zeros(1, 24, 3)
    pose[0, 0, 1] = 0.7
    out = body(pose, betas, torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(out.joints[0, 0], j0 + torch.tensor([1.0, 2.0, 3.0]), atol=1e-5)


def test_dtype_follows_inputs(body):
    out = body(torch.zeros(1, 24, 3, dtype=torch.float64))
    assert out.vertices.dtype == torch.float64
    assert body().vertices.dtype == torch.float32


def test_shape_errors(body):
    with pytest.raises(ValueError, match=r"\(B, 24, 3\)"):
        body(torch.zeros(2, 72))
    with pytest.raises(ValueError, match="betas"):
        body(torch.zeros(2, 24, 3), torch.zeros(2, 11))
    with pytest.raises(ValueError, match="transl"):
        body(torch.zeros(2, 24, 3), transl=torch.zeros(3))
    with pytest.raises(ValueError, match="rotmats"):
        body(rotmats=torch.zeros(2, 24, 3))


def test_missing_model_message(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "SMPL_NEUTRAL.pkl"
    with pytest.raises(FileNotFoundError) as info:
        BodyModel(missing)
    assert str(missing) in str(info.value) and ENV_VAR in str(info.value)
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        BodyModel()


def _tiny_smpl(n: int = 8, betas: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = rng.random((n, 24))
    # a closed octahedron-ish surface isn't needed; faces only need valid indices
    return dict(
        v_template=rng.normal(size=(n, 3)),
        shapedirs=rng.normal(size=(n, 3, betas)) * 0.01,
        posedirs=np.zeros((n, 3, 207)),
        J_regressor=np.full((24, n), 1.0 / n),
        weights=weights / weights.sum(1, keepdims=True),
        kintree_table=np.stack([np.array(SMPL_PARENTS), np.arange(24)]).astype(np.int64),
        f=np.array([[0, 1, 2], [2, 3, 4]], np.int64),
    )


def test_malformed_model_message(tmp_path):
    arrays = _tiny_smpl()
    del arrays["weights"]
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="'weights'"):
        BodyModel(path)
    arrays = _tiny_smpl()
    arrays["J_regressor"] = arrays["J_regressor"][:20]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"J_regressor.*\(24, 8\)"):
        BodyModel(path)


def test_env_var_selects_model(tmp_path, monkeypatch):
    path = tmp_path / "mine.npz"
    np.savez(path, **_tiny_smpl())
    monkeypatch.setenv(ENV_VAR, str(path))
    model = BodyModel()
    assert model.num_vertices == 8 and model.num_betas == 4
    assert model.uvs is None


def test_chumpy_free_pkl_loader(tmp_path):
    """A pickle made to look like the official SMPL .pkl (chumpy arrays, sparse regressor)."""
    import scipy.sparse

    fake_chumpy = types.ModuleType("chumpy")
    fake_ch = types.ModuleType("chumpy.ch")

    class Ch:  # pickled as chumpy.ch.Ch, with the array in its state under 'x'
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = set()
            self._parents = {}

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    fake_ch.Ch = Ch
    fake_chumpy.ch = fake_ch
    arrays = _tiny_smpl()
    data = dict(arrays)
    data["shapedirs"] = Ch(arrays["shapedirs"])
    data["v_template"] = Ch(arrays["v_template"])
    data["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    data["kintree_table"] = arrays["kintree_table"].astype(np.uint32)
    data["kintree_table"][0, 0] = 2**32 - 1
    data["f"] = arrays["f"].astype(np.uint32)
    data["bs_style"] = "lbs"
    path = tmp_path / "SMPL_FAKE.pkl"
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = fake_chumpy, fake_ch
    try:
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    assert "chumpy" not in sys.modules

    loaded = load_model_arrays(path)
    np.testing.assert_allclose(loaded["shapedirs"], arrays["shapedirs"])
    np.testing.assert_allclose(loaded["J_regressor"], arrays["J_regressor"])
    model = BodyModel(path)
    assert model.parents[0] == -1 and model.num_betas == 4
    np.testing.assert_allclose(model.v_template.numpy(), arrays["v_template"], rtol=1e-6)
    out = model(torch.zeros(1, 24, 3), torch.zeros(1, 4))
    assert out.vertices.shape == (1, 8, 3)
    assert "chumpy" not in sys.modules


def test_fixed_shape_body_poses_like_the_model(body):
    gen = torch.Generator().manual_seed(3)
    from smplx.lbs import batch_rodrigues

    R = batch_rodrigues((torch.randn(3, 24, 3, generator=gen) * 0.5).view(-1, 3)).view(3, 24, 3, 3)
    betas, transl = torch.randn(3, 10, generator=gen), torch.randn(3, 3, generator=gen)
    ref = body(rotmats=R, betas=betas, transl=transl)
    out = body.fixed_shape(betas)(R, betas, transl)
    assert torch.allclose(out.vertices, ref.vertices, atol=1e-5) and torch.allclose(out.joints, ref.joints, atol=1e-5)
    assert torch.allclose(out.rotmats_world, ref.rotmats_world, atol=1e-6)
    ids = torch.tensor([7, 4000, 3, 6999])
    part = body.fixed_shape(betas[:1], ids)(R, None, transl)  # one shape for all 3 bodies
    whole = body(rotmats=R, betas=betas[:1], transl=transl)
    assert part.vertices.shape == (3, 4, 3) and torch.allclose(part.vertices, whole.vertices[:, ids], atol=1e-5)
    joints_only = body.fixed_shape(betas, [])(R, None, transl)
    assert joints_only.vertices.shape == (3, 0, 3) and torch.allclose(joints_only.joints, ref.joints, atol=1e-5)
    Rg = R.clone().requires_grad_(True)
    body.fixed_shape(betas, ids)(Rg, None, transl).vertices.sum().backward()
    assert torch.isfinite(Rg.grad).all() and Rg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shaped for 3 bodies"):
        body.fixed_shape(betas)(R[:2], None, transl[:2])
    # a model with pose blend shapes (SMPL's) takes the other skinning path
    smpl_like = copy.deepcopy(body)
    smpl_like.posedirs = torch.randn(body.num_vertices, 3, 207, generator=gen) * 1e-3
    smpl_like.has_posedirs = True
    ref = smpl_like(rotmats=R, betas=betas, transl=transl)
    assert not torch.allclose(ref.vertices, body(rotmats=R, betas=betas, transl=transl).vertices, atol=1e-4)
    part = smpl_like.fixed_shape(betas, ids)(R, None, transl)
    assert torch.allclose(part.vertices, ref.vertices[:, ids], atol=1e-5)
