"""Bring your own 2D keypoints: the landmark sets and their definitions on the mesh, the
OpenPose / RTMPose (Pose2Sim) / EasyMocap readers, and the chain detect --from -> init ->
refine on synthetic files made from a small synthetic capture's ground truth."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mvcap.capture import Session
from mvcap.cli import main
from mvcap.detect import FLIP_INDEX, DetectError, import_detections
from mvcap.initialize import mediapipe_keypoint_definition
from mvcap.keypoints import KEYPOINT_SETS, keypoint_set, keypoint_set_for_count, register_joint_pairs


def posed_keypoints(model, definition, params):
    with torch.no_grad():
        out = model(**params.to_torch(dtype=torch.float64))
        return definition.evaluate(out.joints, out.vertices).numpy(), out.joints.numpy()


def test_keypoint_sets_and_definitions(body_model, tiny_session_path):
    assert [len(KEYPOINT_SETS[n].names) for n in ("body_25", "coco_17", "halpe_26", "coco_133")] == [25, 17, 26, 133]
    np.testing.assert_array_equal(KEYPOINT_SETS["mediapipe_pose_33"].flip_index, FLIP_INDEX)
    for ks in KEYPOINT_SETS.values():
        f = ks.flip_index
        assert (f[f] == np.arange(len(f))).all()
        assert all(ks.names[f[i]] == n.replace("left", "@").replace("right", "left").replace("@", "right")
                   for i, n in enumerate(ks.names) if "left" in n or "right" in n)  # fmt: skip
    assert keypoint_set_for_count(26).name == "halpe_26" and keypoint_set_for_count(25).name == "body_25"
    with pytest.raises(ValueError, match="no single known layout"):
        keypoint_set_for_count(18)
    with pytest.raises(ValueError, match="known: mediapipe_pose_33"):
        keypoint_set("openpose_18")

    with Session.open(tiny_session_path) as s:
        gt = s.read_ground_truth()
    mp = mediapipe_keypoint_definition(body_model)
    mp_kp, joints = posed_keypoints(body_model, mp, gt)
    for name in ("body_25", "coco_17", "halpe_26", "coco_133"):
        d = keypoint_set(name).definition(body_model)
        assert d.names == KEYPOINT_SETS[name].names
        kp, _ = posed_keypoints(body_model, d, gt)
        # landmarks MediaPipe also has are defined by the same rules
        for k, n in enumerate(d.names):
            if n in mp.names and mp.defined[mp.names.index(n)]:
                assert d.defined[k]
                np.testing.assert_allclose(kp[:, k], mp_kp[:, mp.names.index(n)], atol=1e-9)
        if "neck" in d.names:  # OpenPose's neck: the shoulders' midpoint
            np.testing.assert_allclose(kp[:, d.names.index("neck")], joints[:, 16:18].mean(1), atol=1e-9)
        if "mid_hip" in d.names:
            mid = 0.5 * (kp[:, d.names.index("left_hip")] + kp[:, d.names.index("right_hip")])
            np.testing.assert_allclose(kp[:, d.names.index("mid_hip")], mid, atol=1e-9)
    assert keypoint_set("body_25").definition(body_model).defined.all()
    assert keypoint_set("halpe_26").definition(body_model).defined.all()
    d133 = keypoint_set("coco_133").definition(body_model)
    assert d133.defined[:23].all() and not d133.defined[23:91].any()  # body + feet; face undefined
    idx, smpl = register_joint_pairs("halpe_26")
    assert [KEYPOINT_SETS["halpe_26"].names[i] for i in idx][:2] == ["left_shoulder", "right_shoulder"]
    assert smpl[:2] == (16, 17) and register_joint_pairs("nope") is None


def synthetic_detections(session, model, set_name, noise_px=0.5, seed=0):
    """(T, V, K, 3) keypoints of ``set_name`` projected from the session's ground truth."""
    d = keypoint_set(set_name).definition(model)
    rng = np.random.default_rng(seed)
    with Session.open(session) as s:
        gt = s.read_ground_truth()
        kp3, _ = posed_keypoints(model, d, gt)
        uv = s.rig.project(torch.as_tensor(kp3)).numpy()  # (T, V, K, 2)
        names = list(s.view_names)
    uv = uv + rng.normal(0, noise_px, uv.shape)
    conf = np.broadcast_to(np.where(d.defined, 0.9, 0.0), uv.shape[:3])[..., None]
    return np.concatenate([uv, conf], -1), names, gt


def write_openpose_folders(root, kp, names, layout):
    """Per-camera folders of per-frame OpenPose-style JSON, as OpenPose (``<cam>/<cam>_
    <frame:012d>_keypoints.json``) or Pose2Sim/RTMPose (``<cam>_json/<cam>_<frame:06d>.json``)
    write them, with a second, less confident person to ignore."""
    for v, cam in enumerate(names):
        folder = root / (cam if layout == "openpose" else f"{cam}_json")
        folder.mkdir(parents=True)
        for t in range(kp.shape[0]):
            person = kp[t, v].copy()
            decoy = person.copy()
            decoy[:, :2] += 7.0
            decoy[:, 2] *= 0.3
            people = [{"person_id": [-1], "pose_keypoints_2d": p.reshape(-1).round(3).tolist(),
                       "face_keypoints_2d": [], "hand_left_keypoints_2d": []} for p in (decoy, person)]  # fmt: skip
            name = f"{cam}_{t:012d}_keypoints.json" if layout == "openpose" else f"{cam}_{t:06d}.json"
            (folder / name).write_text(json.dumps({"version": 1.3, "people": people}))


def mpjpe_mm(model, a, b):
    with torch.no_grad():
        ja = model(**a.to_torch(dtype=torch.float64)).joints
        jb = model(**b.to_torch(dtype=torch.float64)).joints
    return 1000 * (ja - jb).norm(dim=-1).mean(-1).numpy()


@pytest.mark.parametrize("fmt,set_name", [("openpose", "body_25"), ("rtmpose", "halpe_26")])
def test_chain_with_other_detectors_keypoints(tiny_session, body_model, tmp_path, fmt, set_name):
    kp, names, gt = synthetic_detections(tiny_session, body_model, set_name)
    write_openpose_folders(tmp_path / "pose", kp, names, "openpose" if fmt == "openpose" else "pose2sim")
    runner = CliRunner()
    res = runner.invoke(main, ["detect", str(tiny_session), "--from", fmt, str(tmp_path / "pose")])
    assert res.exit_code == 0, res.output
    assert f"imported {set_name} keypoints for 3 frames" in res.output
    with Session.open(tiny_session) as s:
        assert s.keypoint_format == set_name and s.read_masks(0) is None  # no masks from these detectors
        stored = s.read_keypoints()
        before = s.read_init()
    np.testing.assert_allclose(stored[..., :2], kp[..., :2], atol=2e-3)  # the confident person, not the decoy

    res = runner.invoke(main, ["init", str(tiny_session), "--overwrite"])
    assert res.exit_code == 0, res.output
    with Session.open(tiny_session) as s:
        init = s.read_init()
    ours, theirs = mpjpe_mm(body_model, init, gt), mpjpe_mm(body_model, before, gt)
    print(f"\n{fmt} ({set_name}) keypoints, 0.5 px noise: init MPJPE {ours.round(1)} mm "
          f"(stored regressor-like {theirs.round(1)} mm)")  # fmt: skip
    assert ours.max() < 25.0 and ours.mean() < theirs.mean()

    res = runner.invoke(main, ["refine", str(tiny_session), "--predictor", "oracle", "--frames", "0:1",
                               "--set", "outer_iterations=1", "--set", "fit.iterations=5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    with Session.open(tiny_session) as s:
        assert s.read_results("oracle-joint").done[0]


def test_easymocap_annotations_rescaled_and_person_choice(tiny_session, body_model, tmp_path):
    kp, names, _ = synthetic_detections(tiny_session, body_model, "body_25", noise_px=0.0)
    with Session.open(tiny_session) as s:
        W, H = s.image_size
    for v, cam in enumerate(names):
        d = tmp_path / "em" / "annots" / cam
        d.mkdir(parents=True)
        for t in range(kp.shape[0]):
            big = kp[t, v].copy()
            big[:, :2] = (big[:, :2] + 0.5) * 2 - 0.5  # detected on 2x larger images
            other = big.copy()
            other[:, 2] = 1.0  # a more confident second person: only --person 3 picks ours
            annots = [{"personID": 3, "bbox": [0, 0, 1, 1, 1], "keypoints": big.tolist()},
                      {"personID": 5, "bbox": [0, 0, 1, 1, 1], "keypoints": (other + [20, 0, 0]).tolist()}]  # fmt: skip
            (d / f"{t:06d}.json").write_text(json.dumps({"width": 2 * W, "height": 2 * H, "annots": annots}))
    res = import_detections(tiny_session, "easymocap", tmp_path / "em", person=3)
    assert res.keypoint_format == "body_25" and res.found.all() and res.files == 3 * len(names)
    with Session.open(tiny_session) as s:
        np.testing.assert_allclose(s.read_keypoints()[..., :2], kp[..., :2], atol=1e-3)
    res = import_detections(tiny_session, "easymocap", tmp_path / "em")  # the most confident person
    with Session.open(tiny_session) as s:
        np.testing.assert_allclose(s.read_keypoints()[..., 0], kp[..., 0] + 10, atol=1e-3)


def test_import_errors(tiny_session, body_model, tmp_path):
    kp, names, _ = synthetic_detections(tiny_session, body_model, "halpe_26")
    write_openpose_folders(tmp_path / "pose", kp, names, "pose2sim")
    with pytest.raises(DetectError, match=r"no keypoint folder for camera .*folders found"):
        import_detections(tiny_session, "openpose", tmp_path)
    with pytest.raises(DetectError, match="layout body_25 has 25"):
        import_detections(tiny_session, "rtmpose", tmp_path / "pose", keypoint_format="body_25")
    with pytest.raises(DetectError, match="unknown keypoint file format"):
        import_detections(tiny_session, "alphapose", tmp_path / "pose")
    import_detections(tiny_session, "rtmpose", tmp_path / "pose", frames=[0, 1])
    with Session.open(tiny_session) as s:
        assert s.detections_written.tolist() == [True, True, False]
    # another landmark set on top needs --overwrite
    write_openpose_folders(tmp_path / "op", synthetic_detections(tiny_session, body_model, "body_25")[0], names,
                           "openpose")  # fmt: skip
    with pytest.raises(DetectError, match="already holds 'halpe_26' detections; pass overwrite"):
        import_detections(tiny_session, "openpose", tmp_path / "op")
    import_detections(tiny_session, "openpose", tmp_path / "op", overwrite=True)
    with Session.open(tiny_session) as s:
        assert s.keypoint_format == "body_25" and s.detections_written.all()
    # keypoints from images of another size are refused with a hint
    big = kp.copy()
    big[..., :2] *= 10
    write_openpose_folders(tmp_path / "big", big, names, "pose2sim")
    with pytest.raises(DetectError, match="far outside the session's 128x128 images"):
        import_detections(tiny_session, "pose2sim", tmp_path / "big", overwrite=True)
    res = CliRunner().invoke(main, ["detect", str(tiny_session), "--person", "1"])
    assert res.exit_code != 0 and "--from" in res.output


def test_frame_numbers_follow_the_ingest(tmp_path):
    """Session frame t reads file number start + t * stride + offset[camera] of the ingest."""
    from mvcap.cameras import Camera, Rig

    K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    rig = Rig(tuple(Camera(c, K, np.zeros(5), np.eye(3), np.array([0.0, 0, 3]), (16, 12)) for c in ("a", "b")))
    prov = {"ingest": {"config": {"start": 10, "stride": 2, "offsets": {"b": 1}}}}
    Session.create(tmp_path / "s.h5", rig, num_frames=3, provenance=prov).close()
    for cam in ("a", "b"):
        (tmp_path / "kp" / cam).mkdir(parents=True)
        for n in range(30):  # keypoint x = the file's frame number (kept inside the 16 x 12 image)
            kp = np.tile([n / 4.0, 5.0, 0.8], (25, 1))
            (tmp_path / "kp" / cam / f"{cam}_{n:012d}_keypoints.json").write_text(
                json.dumps({"people": [{"pose_keypoints_2d": kp.reshape(-1).tolist()}]})
            )
    res = import_detections(tmp_path / "s.h5", "openpose", tmp_path / "kp")
    with Session.open(tmp_path / "s.h5") as s:
        x = s.read_keypoints()[:, :, 0, 0] * 4.0
    assert res.keypoint_format == "body_25" and not res.missing
    np.testing.assert_allclose(x, [[10, 11], [12, 13], [14, 15]])
    import_detections(tmp_path / "s.h5", "openpose", tmp_path / "kp", first_frame=20)
    with Session.open(tmp_path / "s.h5") as s:
        np.testing.assert_allclose(s.read_keypoints()[:, :, 0, 0] * 4.0, [[20, 20], [22, 22], [24, 24]])
    res = import_detections(tmp_path / "s.h5", "openpose", tmp_path / "kp", first_frame=26)
    assert res.missing == ((2, "a"), (2, "b")) and not res.found[2].any()


def test_register_from_imported_keypoints_without_masks(tiny_session, body_model, tmp_path):
    """No masks from OpenPose/RTMPose: the registration fits the shape to the keypoints alone."""
    from mvcap.register import RegisterConfig, ShapeFitConfig, TextureConfig, register_subject

    kp, names, _ = synthetic_detections(tiny_session, body_model, "halpe_26")
    write_openpose_folders(tmp_path / "pose", kp, names, "pose2sim")
    import_detections(tiny_session, "rtmpose", tmp_path / "pose")
    cfg = RegisterConfig(num_frames=2, shape=ShapeFitConfig(rounds=1, iterations=5), texture=TextureConfig(size=64))
    res = register_subject(tiny_session, cfg=cfg, model=body_model, progress=False)
    assert res.shape.cues == ("keypoints",) and np.isfinite(res.shape.keypoint_px).all()
    assert res.shape.keypoint_px.max() < 10.0
