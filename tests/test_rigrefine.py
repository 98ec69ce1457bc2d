"""Rig refinement from people's keypoints: a bumped camera is put back, a good rig is left alone."""

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import bump_camera

from mvcap.cameras import Rig
from mvcap.rigrefine import RigRefineConfig, RigRefineError, leave_one_out_px, refine_rig


def _scene(seed=0, T=30, K=20, V=4, size=512, noise_px=0.5):
    """A ring rig and person-sized clouds of K points walking around its centre, seen by every
    camera with pixel noise: (rig, keypoints (T, V, K, 3))."""
    from mvcap.synth import RigConfig, make_ring_rig

    rng = np.random.default_rng(seed)
    rig = make_ring_rig(RigConfig(num_cameras=V, image_size=(size, size)), rng)
    centre = np.stack([rng.uniform(-0.8, 0.8, T), np.zeros(T), rng.uniform(-0.8, 0.8, T)], -1)
    body = rng.uniform([-0.25, 0.0, -0.15], [0.25, 1.8, 0.15], (T, K, 3))  # metres, Y up
    X = torch.as_tensor(centre[:, None] + body)
    uv = rig.project(X).numpy() + rng.normal(0, noise_px, (T, V, K, 2))
    return rig, np.concatenate([uv, np.full((T, V, K, 1), 0.9)], -1)


def _angle_deg(a, b) -> float:
    """The angle between two cameras' orientations."""
    return float(np.degrees(np.arccos(np.clip((np.trace(a.R_world2cam @ b.R_world2cam.T) - 1) / 2, -1, 1))))


def _relative_angles_deg(a: Rig, b: Rig) -> np.ndarray:
    """Angles between the camera-to-camera rotations of two rigs (invariant to moving the rig as a whole)."""
    out = []
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            ra = a[i].R_world2cam @ a[j].R_world2cam.T
            rb = b[i].R_world2cam @ b[j].R_world2cam.T
            out.append(np.degrees(np.arccos(np.clip((np.trace(ra @ rb.T) - 1) / 2, -1, 1))))
    return np.array(out)


def test_a_bumped_camera_is_put_back():
    rig, kp = _scene()
    bumped = bump_camera(bump_camera(rig, 1, rotvec_deg=(0.8, -1.0, 0.5)), 2, move_m=(0.03, 0.0, -0.03))
    res = refine_rig(bumped, kp)
    assert res.accepted and res.gain > 0.5
    # the bumped cameras were many pixels off; now each agrees with the others near the noise
    assert res.before_px[1] > 5 and res.before_px[2] > 2
    assert np.all(res.after_px < 1.5), res.after_px
    assert _relative_angles_deg(bumped, rig).max() > 1.0
    # the turned camera is turned back, and the cameras nobody touched stay where they were (the
    # prior's promise; the moved camera may turn a little instead: from a few metres a small move
    # and a small turn look alike)
    assert _angle_deg(res.rig[1], rig[1]) < 0.2
    assert res.rotation_deg[[0, 3]].max() < 0.15 and res.centre_m[[0, 3]].max() < 0.005
    assert _relative_angles_deg(res.rig, rig).max() < 0.5
    # intrinsics are kept
    for a, b in zip(res.rig, bumped):
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.dist, b.dist)


def test_a_good_rig_is_left_alone():
    rig, kp = _scene(seed=1)
    res = refine_rig(rig, kp)
    assert not res.accepted  # nothing to gain on the held-back frames
    assert res.rotation_deg.max() < 0.1 and res.centre_m.max() < 0.005
    np.testing.assert_allclose(leave_one_out_px(res.rig, kp), leave_one_out_px(rig, kp), atol=0.2)


def test_unusable_detections_get_clear_errors():
    rig, kp = _scene(T=2)
    with pytest.raises(RigRefineError, match="2 frames are too few"):
        refine_rig(rig, kp)
    rig, kp = _scene(T=12)
    kp[:, 3, :, 2] = 0.1  # camera 3 never confident
    with pytest.raises(RigRefineError, match=rf"\['{rig.names[3]}'\] share none"):
        refine_rig(rig, kp)
    with pytest.raises(RigRefineError, match="one camera"):
        refine_rig(rig.subset(rig.names[:1]), kp[:, :1])
    with pytest.raises(ValueError, match="check_every"):
        RigRefineConfig(check_every=1)


def test_cli_refines_a_session_rig_and_keeps_the_original(detected_session_path, tmp_path):
    from mvcap.capture import Session
    from mvcap.cli import main
    from mvcap.rigio import load_rig

    path = tmp_path / "s.h5"
    shutil.copy(detected_session_path, path)
    with Session.open(path, "a") as s:
        true_rig = s.rig
        s.replace_rig(bump_camera(true_rig, 1, rotvec_deg=(1.5, 1.5, 0.0)))
        bumped = s.rig
    with Session.open(path) as s:  # stored, and the first rig kept
        assert _relative_angles_deg(s.rig, true_rig).max() > 1.5
        np.testing.assert_array_equal(s.original_rig.to_arrays()["R_world2cam"], true_rig.to_arrays()["R_world2cam"])
    out = tmp_path / "refined.toml"
    args = ["rig", "refine", str(path), "--set", "check_every=2", "--out", str(out), "--apply"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "better" in res.output and "redo `mvcap init --overwrite`" in res.output
    refined = load_rig(out)
    with Session.open(path) as s:
        kp = s.read_keypoints()
    # two frames of one person calibrate weakly (a turn and a move trade off), but the cameras
    # agree with each other better on every frame
    assert np.nanmean(leave_one_out_px(refined, kp)) < 0.8 * np.nanmean(leave_one_out_px(bumped, kp))
    with Session.open(path) as s:
        np.testing.assert_allclose(s.rig.to_arrays()["R_world2cam"], refined.to_arrays()["R_world2cam"], atol=1e-9)
        np.testing.assert_array_equal(s.original_rig.to_arrays()["R_world2cam"], true_rig.to_arrays()["R_world2cam"])
    # a rig of other cameras is refused, with the cameras named
    with Session.open(path, "a") as s, pytest.raises(Exception, match="must have the session's cameras"):
        s.replace_rig(true_rig.subset(true_rig.names[:2]))


def test_run_stage_refines_a_bumped_rig_once(detected_session_path, tmp_path):
    from mvcap.capture import Session
    from mvcap.pipeline import RigRefineStage, _refine_rig

    path = tmp_path / "s.h5"
    shutil.copy(detected_session_path, path)
    stage = RigRefineStage(enabled=True, config=RigRefineConfig(check_every=2))
    assert _refine_rig(path, stage).startswith("rig kept")  # the synthetic rig is right
    with Session.open(path, "a") as s:
        s.replace_rig(bump_camera(s.rig, 2, rotvec_deg=(0.0, 2.0, 0.0)))
    assert _refine_rig(path, stage).startswith("rig already refined")  # a replaced rig is kept
    with Session.open(path, "a") as s:  # as if ingested with the bumped rig
        del s._writable()["rig_original"]
    note = _refine_rig(path, stage)
    assert note.startswith("rig refined from the keypoints"), note
    with Session.open(path) as s:
        assert s.original_rig is not None


def test_init_warns_when_the_rig_does_not_fit(detected_session_path, tmp_path, body_model):
    from mvcap.capture import Session
    from mvcap.initialize import initialize_session
    from mvcap.rigrefine import rig_fit_warnings

    rig, kp = _scene(seed=2)
    assert rig_fit_warnings(rig, kp) == []
    warned = rig_fit_warnings(bump_camera(rig, 1, rotvec_deg=(0.0, 1.5, 0.0)), kp)
    assert any(f"camera {rig.names[1]}:" in w and "mvcap rig refine" in w for w in warned), warned

    path = tmp_path / "s.h5"
    shutil.copy(detected_session_path, path)
    res = initialize_session(path, overwrite=True, progress=False, model=body_model)
    assert res.rig_warnings == ()
    with Session.open(path, "a") as s:
        s.replace_rig(bump_camera(s.rig, 1, rotvec_deg=(0.0, 3.0, 0.0)))
    res = initialize_session(path, overwrite=True, progress=False, model=body_model)
    assert any("camera cam01:" in w for w in res.rig_warnings), res.rig_warnings
