"""Keypoint initialisation: body fit to triangulated keypoints, sessions, npz estimates, CLI."""

import numpy as np
import pytest
import roma
import torch
from click.testing import CliRunner
from test_triangulate import corrupt, make_scene

from mvcap.capture import Session
from mvcap.initialize import (
    InitConfig,
    InitError,
    KeypointBody,
    fit_keypoints,
    init_from_npz,
    initialize_session,
    load_npz_init,
    mediapipe_keypoint_definition,
)
from mvcap.motions import PerturbConfig, perturb_like_regressor
from mvcap.triangulate import triangulate_keypoints


def mpjpe_mm(model, pose, betas, transl, pose_gt, betas_gt, transl_gt) -> np.ndarray:
    def joints(p, b, t):
        p = torch.as_tensor(np.asarray(p), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(b), dtype=torch.float32).reshape(-1, 10)
        return model(p, b, torch.as_tensor(np.asarray(t), dtype=torch.float32)).joints

    with torch.no_grad():
        return 1000 * (joints(pose, betas, transl) - joints(pose_gt, betas_gt, transl_gt)).norm(dim=-1).mean(-1).numpy()


# ------------------------------------------------------------------------------------------
# keypoints on the body
# ------------------------------------------------------------------------------------------
def test_keypoint_definition_rules(body_model):
    d = mediapipe_keypoint_definition(body_model)
    assert d.defined.sum() == 21
    for name in ("nose", "left_hip", "right_hip", "left_foot_index", "right_wrist"):
        assert d.defined[d.names.index(name)]
    for name in ("left_eye_inner", "mouth_left", "left_pinky"):
        assert not d.defined[d.names.index(name)] and d.rules[d.names.index(name)] == "undefined"
    # rows are affine combinations, so keypoints move rigidly with the body
    rows = d.joint_weights.sum(1) + d.vertex_weights.sum(1)
    np.testing.assert_allclose(rows[d.defined], 1.0, atol=1e-12)
    # hips: a few cm in front of the SMPL hip joint, mirrored left/right
    with torch.no_grad():
        out = body_model()
        kp = d.evaluate(out.joints.double(), out.vertices.double())[0].numpy()
    J = out.joints[0].double().numpy()
    lh, rh = kp[d.names.index("left_hip")], kp[d.names.index("right_hip")]
    assert 0.01 < lh[2] - J[1, 2] < 0.04 and abs(lh[1] - J[1, 1]) < 0.01
    assert abs(lh[0] + rh[0]) < 0.01 and lh[0] > 0.05


def test_keypoint_body_matches_full_model(body_model):
    d = mediapipe_keypoint_definition(body_model)
    rng = np.random.default_rng(3)
    pose = torch.as_tensor(rng.normal(0, 0.3, (2, 24, 3)))
    betas = torch.as_tensor(rng.normal(0, 1, (2, 10)))
    transl = torch.as_tensor(rng.normal(0, 1, (2, 3)))
    extra = np.array([0, 100, 5000])
    kp, joints, verts = KeypointBody(body_model, d, extra)(roma.rotvec_to_rotmat(pose), betas, transl)
    with torch.no_grad():
        out = body_model(pose.float(), betas.float(), transl.float())
    ref = d.evaluate(out.joints.double(), out.vertices.double())
    assert (kp - ref).abs().max() < 1e-5
    assert (joints - out.joints).abs().max() < 1e-5
    assert (verts - out.vertices[:, extra]).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------
# the fit
# ------------------------------------------------------------------------------------------
def test_fit_round_trip_beats_regressor_like_estimates(body_model):
    scene = make_scene(body_model, seed=1, T=2, V=6)
    kp, _, _ = corrupt(scene, noise_px=1.0)
    tri = triangulate_keypoints(scene["rig"], kp)
    res = fit_keypoints(body_model, scene["rig"], tri, InitConfig(), betas=np.zeros(10))
    assert res.fitted.all()
    T = len(res.fitted)
    zeros = np.zeros((T, 10))
    ours = mpjpe_mm(body_model, res.pose_rotvecs, zeros, res.transl, scene["pose"], zeros, scene["transl"])
    pose_r, transl_r, _ = perturb_like_regressor(
        np.random.default_rng(0), scene["pose"], scene["transl"], zeros, cfg=PerturbConfig()
    )
    theirs = mpjpe_mm(body_model, pose_r, zeros, transl_r, scene["pose"], zeros, scene["transl"])
    print(f"\ninit MPJPE (1 px noise, outliers, swaps): {ours.round(1)} mm; regressor-like {theirs.round(1)} mm")
    assert ours.max() < 25.0  # measured 7-10 mm
    assert ours.mean() < theirs.mean()
    assert np.all(res.keypoint_error_m < 0.02)
    assert np.all(res.reprojection_px < 5.0)


def test_fit_with_unknown_shape(body_model):
    """Without a known shape the betas are fitted on the first frame and then held."""
    scene = make_scene(body_model, seed=2, T=2, V=5)
    kp, _, _ = corrupt(scene, noise_px=0.5, drop=0.0, outlier_frac=0.0)
    tri = triangulate_keypoints(scene["rig"], kp)
    res = fit_keypoints(
        body_model, scene["rig"], tri, InitConfig(iterations=40, yaw_starts=2, full_starts=1), betas=None
    )
    assert res.fitted.all() and res.restarts[0]
    np.testing.assert_allclose(res.betas[0], res.betas[1])
    err = mpjpe_mm(body_model, res.pose_rotvecs, res.betas, res.transl, scene["pose"], np.zeros(10), scene["transl"])
    assert err.max() < 30.0
    heading_err = roma.rotmat_geodesic_distance(
        roma.rotvec_to_rotmat(torch.tensor(res.pose_rotvecs[:, 0])),
        roma.rotvec_to_rotmat(torch.tensor(scene["pose"][:, 0])),
    )
    print(
        f"\nunknown shape: MPJPE {err.round(1)} mm, root rotation error {np.rad2deg(heading_err.numpy()).round(1)} deg"
    )
    assert heading_err.max() < np.deg2rad(15)  # the spine can take up part of the root turn


def test_frames_with_too_few_keypoints_are_skipped(body_model):
    scene = make_scene(body_model, seed=4, T=2, V=4)
    kp, _, _ = corrupt(scene, noise_px=0.5, drop=0.0, outlier_frac=0.0)
    kp[0, :, :, 2] = 0.0  # nothing seen in frame 0
    tri = triangulate_keypoints(scene["rig"], kp)
    res = fit_keypoints(body_model, scene["rig"], tri, InitConfig(iterations=30), betas=np.zeros(10))
    assert not res.fitted[0] and np.isnan(res.pose_rotvecs[0]).all()
    assert res.fitted[1] and res.restarts[1]


# ------------------------------------------------------------------------------------------
# sessions
# ------------------------------------------------------------------------------------------
def _write_gt_detections(path, model, noise_px=0.5, seed=0):
    """Store MediaPipe-format detections made from the session's ground truth."""
    d = mediapipe_keypoint_definition(model)
    rng = np.random.default_rng(seed)
    with Session.open(path, mode="a") as s:
        gt = s.read_ground_truth()
        with torch.no_grad():
            out = model(**gt.to_torch())
            kp3 = d.evaluate(out.joints.double(), out.vertices.double())
        uv = s.rig.project(kp3).numpy()
        conf = np.where(d.defined, 0.9, 0.0)
        for t in range(s.num_frames):
            kp = np.concatenate(
                [uv[t] + rng.normal(0, noise_px, uv[t].shape), np.broadcast_to(conf, uv[t].shape[:2])[..., None]], -1
            )
            s.write_detections(t, kp)
        return gt


def test_initialize_session_writes_estimates_and_resumes(tiny_session, body_model):
    with pytest.raises(InitError, match="mvcap detect"):
        initialize_session(tiny_session, InitConfig(), progress=False, model=body_model)
    gt = _write_gt_detections(tiny_session, body_model)
    with Session.open(tiny_session) as s:
        assert s.init_valid.all()  # synthetic sessions come with regressor-like estimates
        before = s.read_init()
    res = initialize_session(tiny_session, InitConfig(), progress=False, model=body_model)
    assert res.skipped == 3 and res.frames.size == 0  # nothing to do without overwrite
    res = initialize_session(tiny_session, InitConfig(), frames=[1], overwrite=True, progress=False, model=body_model)
    assert res.fitted.all() and res.swaps == 0
    with Session.open(tiny_session) as s:
        init = s.read_init()
        subject_betas = s.subject.betas
    np.testing.assert_allclose(init.betas[0], subject_betas, atol=1e-6)  # the registered shape is used
    f = [1]
    ours = mpjpe_mm(body_model, init.pose_rotvecs[f], init.betas[f], init.transl[f], gt.pose_rotvecs[f],
                    gt.betas[f], gt.transl[f])  # fmt: skip
    theirs = mpjpe_mm(body_model, before.pose_rotvecs[f], before.betas[f], before.transl[f],
                      gt.pose_rotvecs[f], gt.betas[f], gt.transl[f])  # fmt: skip
    print(f"\nsession init MPJPE {ours.round(1)} mm (stored regressor-like {theirs.round(1)} mm)")
    assert ours.max() < 25.0 and ours.mean() < theirs.mean()
    for t in (0, 2):  # frames not asked for are untouched
        np.testing.assert_array_equal(init.pose_rotvecs[t], before.pose_rotvecs[t])


# ------------------------------------------------------------------------------------------
# user-supplied npz
# ------------------------------------------------------------------------------------------
def test_npz_round_trip(tiny_session, tmp_path):
    rng = np.random.default_rng(0)
    poses = rng.normal(0, 0.2, (3, 72))
    trans = rng.normal(0, 0.5, (3, 3))
    betas = rng.normal(0, 1, 8)  # fewer than 10: zero-padded
    path = tmp_path / "amass_like.npz"
    np.savez(path, poses=poses, trans=trans, betas=betas, gender="neutral")
    with pytest.raises(InitError, match="overwrite"):
        init_from_npz(tiny_session, path)
    assert init_from_npz(tiny_session, path, overwrite=True) == 3
    with Session.open(tiny_session) as s:
        init = s.read_init()
    np.testing.assert_allclose(init.pose_rotvecs, poses.reshape(3, 24, 3), atol=1e-6)
    np.testing.assert_allclose(init.transl, trans, atol=1e-6)
    np.testing.assert_allclose(init.betas[:, :8], np.tile(betas, (3, 1)), atol=1e-6)
    assert np.all(init.betas[:, 8:] == 0)
    # the other spelling; betas missing -> the session's subject shape
    path2 = tmp_path / "mvcap_like.npz"
    np.savez(path2, pose_rotvecs=poses.reshape(3, 24, 3), transl=trans)
    params = load_npz_init(path2, 3, default_betas=np.arange(10.0))
    np.testing.assert_allclose(params.betas, np.tile(np.arange(10.0), (3, 1)))


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(trans=np.zeros((3, 3)), betas=np.zeros(10)), r"no pose.*Keys found: \['betas', 'trans'\]"),
        (dict(poses=np.zeros((3, 156)), trans=np.zeros((3, 3))), r"\(T, 72\).*SMPL-H"),
        (dict(pose_rotvecs=np.zeros((3, 23, 3)), trans=np.zeros((3, 3))), r"\(T, 24, 3\)"),
        (dict(poses=np.zeros((3, 72)), betas=np.zeros(10)), r"'trans' or 'transl'"),
        (dict(poses=np.zeros((3, 72)), transl=np.zeros((2, 3))), r"'transl' must have shape \(T=3, 3\)"),
        (dict(poses=np.zeros((3, 72)), trans=np.zeros((3, 3)), betas=np.zeros(16)), r"16 shape components"),
        (dict(poses=np.zeros((4, 72)), trans=np.zeros((4, 3)), betas=np.zeros(10)), r"4 frames.*session has 3"),
        (dict(poses=np.zeros((3, 72)), trans=np.full((3, 3), 1500.0), betas=np.zeros(10)), r"metres, not mm"),
        (dict(poses=np.full((3, 72), np.nan), trans=np.zeros((3, 3)), betas=np.zeros(10)), r"NaN"),
    ],
)
def test_npz_bad_inputs(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InitError, match=message):
        load_npz_init(path, 3)


def test_npz_missing_betas_and_unreadable_files(tmp_path):
    path = tmp_path / "nobetas.npz"
    np.savez(path, poses=np.zeros((3, 72)), trans=np.zeros((3, 3)))
    with pytest.raises(InitError, match="no 'betas'"):
        load_npz_init(path, 3)
    bad = tmp_path / "garbage.npz"
    bad.write_text("not a zip")
    with pytest.raises(InitError, match="cannot read"):
        load_npz_init(bad)
    with pytest.raises(InitError, match="does not exist"):
        load_npz_init(tmp_path / "missing.npz")


def test_cli_init_from_npz_and_errors(tiny_session, tmp_path):
    from mvcap.cli import main

    path = tmp_path / "p.npz"
    np.savez(path, poses=np.zeros((3, 72)), trans=np.zeros((3, 3)), betas=np.zeros(10))
    runner = CliRunner()
    res = runner.invoke(main, ["init", str(tiny_session), "--from-npz", str(path), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "initial estimates for 3 frames" in res.output
    np.savez(path, poses=np.zeros((3, 70)), trans=np.zeros((3, 3)), betas=np.zeros(10))
    res = runner.invoke(main, ["init", str(tiny_session), "--from-npz", str(path), "--overwrite"])
    assert res.exit_code == 2 and "error:" in res.output and "(T, 72)" in res.output
    res = runner.invoke(main, ["init", str(tiny_session)])  # no detections yet
    assert res.exit_code == 2 and "mvcap detect" in res.output
    res = runner.invoke(main, ["init", str(tiny_session), "--set", "betas=wrong"])
    assert res.exit_code == 2 and "betas must be" in res.output


def test_init_with_a_subset_of_views_from_the_cli(tiny_session, body_model):
    """`mvcap init --views`: fit with some cameras' detections only (cross-validation leaves one out)."""
    from click.testing import CliRunner
    from conftest import detect_from_ground_truth

    from mvcap.cli import main

    detect_from_ground_truth(tiny_session, body_model)
    out = CliRunner().invoke(main, ["init", str(tiny_session), "--overwrite", "--views", "cam00,cam01,cam02"])
    assert out.exit_code == 0, out.output
    assert "fitted 3/3 frames" in out.output
    bad = CliRunner().invoke(main, ["init", str(tiny_session), "--overwrite", "--views", "cam00,nope"])
    assert bad.exit_code == 2 and "at least 2 of this session's cameras" in bad.output
