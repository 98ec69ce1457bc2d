"""Tests for mvcap.synth: rigs, subjects, a tiny generated session and its ground truth."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mvcap import synth as S
from mvcap.cameras import project

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bench"


@pytest.fixture(scope="module")
def model():
    body = pytest.importorskip("mvcap.body")
    try:
        return body.load_body_model()
    except Exception as exc:
        pytest.skip(f"no body model: {exc}")


@pytest.fixture(scope="module")
def tiny_cfg():
    return S.load_scene_config(CONFIGS / "tiny.toml")


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory, model, tiny_cfg):
    out = tmp_path_factory.mktemp("synth")
    return S.generate_benchmark(out / "a", tiny_cfg, model, progress=False)[0]


@pytest.mark.parametrize("name", ["standard", "standard8", "tiny"])
def test_bench_configs_load(name):
    cfg = S.load_scene_config(CONFIGS / f"{name}.toml")
    assert cfg.seed == 0
    assert cfg.rig.num_cameras == (8 if name == "standard8" else 4)
    assert cfg.rig.image_size == ((128, 128) if name == "tiny" else (512, 512))
    assert (cfg.num_subjects, cfg.frames_per_subject) == ((1, 3) if name == "tiny" else (4, 25))


def test_ring_rig_looks_at_centre():
    cfg = S.RigConfig(num_cameras=6)
    rig = S.make_ring_rig(cfg, np.random.default_rng(0))
    assert len(rig) == 6
    uv = project(rig, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))[:, 0].numpy()
    assert np.all(np.abs(uv - 255.5) < 100)  # the capture centre is near the image centre
    for c in rig:
        r = np.hypot(c.center_world[0], c.center_world[2])
        assert 3.0 <= r <= 4.0 and 1.0 <= c.center_world[1] <= 2.2
        assert -0.1 <= c.dist[0] <= 0.1 and abs(c.dist[1]) <= 0.02
    np.testing.assert_array_equal(
        S.make_ring_rig(cfg, np.random.default_rng(0)).to_arrays()["K"], rig.to_arrays()["K"]
    )


def test_subjects_distinct_and_textured(model):
    cfg = S.SubjectConfig(texture_size=128)
    a = S.make_subject(np.random.default_rng(0), model, "a", cfg)
    b = S.make_subject(np.random.default_rng(1), model, "b", cfg)
    assert a.texture.shape == (128, 128, 3) and a.texture.dtype == np.uint8
    assert np.abs(a.betas).max() <= 2.5 and not np.allclose(a.betas, b.betas)
    assert np.abs(a.texture.astype(int) - b.texture.astype(int)).mean() > 20
    # detail at fine scale (for optical flow): strong local gradients almost everywhere
    g = np.abs(np.diff(a.texture.astype(float).mean(-1), axis=1))
    assert g.mean() > 2.0


def test_tiny_session_ground_truth_matches_images(tiny_session, model):
    import cv2

    from mvcap.capture import Session
    from mvcap.render import rasterize, undistort_images

    with Session.open(tiny_session) as s:
        assert s.complete and s.num_frames == 3 and s.num_views == 4
        gt = s.read_ground_truth()
        extra = s.read_ground_truth_extras()
        rig = s.rig
        init = s.read_init()
        imgs = s.read_frame(0)
        assert s.subject is not None and s.provenance["seed"] == 0
    assert imgs.shape == (4, 128, 128, 3) and imgs.std() > 10
    masks, vis = extra["masks"], extra["visibility"]
    with torch.no_grad():
        out = model(
            torch.as_tensor(gt.pose_rotvecs).float(),
            torch.as_tensor(gt.betas).float(),
            torch.as_tensor(gt.transl).float(),
        )
    verts = out.vertices.double()
    assert verts[..., 1].min() > -1e-4  # standing on the floor y = 0
    for t in range(3):
        uv = project(rig, verts[t]).numpy()  # distorted photo pixels (V, N, 2)
        ij = np.round(uv).astype(int)
        for v in range(4):
            sel = vis[t, v]
            assert sel.sum() > 100
            u, w = np.clip(ij[v, sel, 0], 0, 127), np.clip(ij[v, sel, 1], 0, 127)
            # vertices on the silhouette contour sit on the mask boundary, and the photo's
            # pixel grid is resampled by the lens distortion: allow them 1 px
            near = cv2.dilate(masks[t, v], np.ones((3, 3), np.uint8))[w, u].mean()
            assert near >= 0.999, f"frame {t} view {v}: {near:.4f} within 1 px"
            inside = masks[t, v][w, u].mean()
            assert inside >= 0.95, f"frame {t} view {v}: {inside:.3f} on the nearest pixel"
        # the stored (distorted) silhouettes undistort onto an independent pinhole render
        frags = rasterize(rig, verts[t].float(), model.faces)
        und = undistort_images(rig, masks[t], interpolation=0)
        for v in range(4):
            a, b = und[v] > 0, frags.mask[v].numpy()
            core = np.zeros_like(a)
            core[3:-3, 3:-3] = True  # undistortion leaves the image border empty
            iou = (a & b & core).sum() / max(((a | b) & core).sum(), 1)
            assert iou > 0.9, f"view {v}: IoU {iou:.3f}"
    # initial estimates are perturbed but close
    d = np.linalg.norm(init.transl - gt.transl, axis=-1)
    assert 0.0 < d.mean() < 0.3
    np.testing.assert_allclose(init.betas, gt.betas)


def test_generation_is_deterministic(tiny_session, tmp_path, model, tiny_cfg):
    from mvcap.capture import Session

    again = S.generate_session(tmp_path / "b.h5", tiny_cfg, model, progress=False, subject_index=0)
    with Session.open(tiny_session) as a, Session.open(again) as b:
        for t in range(a.num_frames):
            np.testing.assert_array_equal(a.read_frame(t), b.read_frame(t))
        np.testing.assert_array_equal(a.rig.to_arrays()["K"], b.rig.to_arrays()["K"])
        for read in ("read_init", "read_ground_truth"):
            pa, pb = getattr(a, read)(), getattr(b, read)()
            for k in ("pose_rotvecs", "betas", "transl"):
                np.testing.assert_array_equal(getattr(pa, k), getattr(pb, k))
        ea, eb = a.read_ground_truth_extras(), b.read_ground_truth_extras()
        assert sorted(ea) == sorted(eb) == ["joints", "masks", "visibility"]
        for k in ea:
            np.testing.assert_array_equal(ea[k], eb[k])
        np.testing.assert_array_equal(a.subject.texture, b.subject.texture)


def test_contact_sheet(tiny_session, tmp_path):
    import cv2

    png = S.contact_sheet(
        tiny_session, frames=(0, 2), out_png=tmp_path / "sheet.png", tile=64, outline=True
    )
    img = cv2.imread(str(png))
    assert img.shape == (128, 256, 3)


@pytest.mark.parametrize("name", ["studio", "studio8"])
def test_studio_configs_load(name):
    cfg = S.load_scene_config(CONFIGS / f"{name}.toml")
    assert cfg.init == "keypoints" and cfg.num_subjects > 4
    assert cfg.rig.total_cameras == (8 if name == "studio8" else 4)
    assert sorted(cfg.rig.image_size) == [540, 960]  # half of 1080 x 1920
    assert cfg.detector.noise_px == (5.0, 10.0) and cfg.detector.dropout == (0.1, 0.2)
    assert S.load_scene_config(CONFIGS / "standard.toml").init == "perturb"


def test_rig_rings():
    rings = (S.RingConfig(4, (3.0, 3.2), (1.0, 1.4)), S.RingConfig(3, (2.0, 2.2), (2.2, 2.6)))
    cfg = S.RigConfig(rings=rings)
    rig = S.make_ring_rig(cfg, np.random.default_rng(1))
    assert cfg.total_cameras == len(rig) == 7 and rig.names[-1] == "cam06"
    for c, ring in zip(rig, (rings[0],) * 4 + (rings[1],) * 3, strict=True):
        r = np.hypot(c.center_world[0], c.center_world[2])
        assert ring.radius_m[0] <= r <= ring.radius_m[1] and ring.height_m[0] <= c.center_world[1] <= ring.height_m[1]
    uv = project(rig, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))[:, 0].numpy()
    assert np.all(np.abs(uv - 255.5) < 100)  # every ring looks at the capture centre
    with pytest.raises(ValueError, match="num_cameras"):
        S.make_ring_rig(S.RigConfig(rings=(S.RingConfig(0),)), np.random.default_rng(0))


def test_simulated_detector_error_rates(model):
    """Dropout, swaps and noise at the configured rates; offsets mirrored left/right."""
    from mvcap.detect import FLIP_INDEX
    from mvcap.initialize import mediapipe_keypoint_definition
    from mvcap.synth_detect import DetectorSimConfig, simulate_detections

    T = 300
    rng = np.random.default_rng(0)
    pose = np.zeros((T, 24, 3))
    pose[:, 0, 1] = rng.uniform(-0.5, 0.5, T)  # facing the rig's cameras more or less
    transl = np.tile([0.0, 0.9, 0.0], (T, 1))
    betas = torch.zeros(T, 10)
    with torch.no_grad():
        out = model(torch.as_tensor(pose, dtype=torch.float32), betas, torch.as_tensor(transl, dtype=torch.float32))
    rig = S.make_ring_rig(
        S.RigConfig(num_cameras=4, image_size=(540, 960), hfov_deg=(40, 40)), np.random.default_rng(0)
    )
    cfg = DetectorSimConfig(noise_px=(6.0, 6.0), dropout=(0.15, 0.15), swap_prob=0.1, bias_m=0.0)
    det = simulate_detections(model, rig, pose, out.vertices.double().numpy(), out.joints.double().numpy(), cfg, rng)
    d = mediapipe_keypoint_definition(model)
    kp = det.keypoints
    assert kp.shape == (T, 4, 33, 3) and kp.dtype == np.float32
    assert 0.12 < det.dropped[..., d.defined].mean() < 0.18
    assert 0.07 < det.swapped.mean() < 0.13
    assert np.all(kp[..., ~d.defined, 2] == 0)  # eye corners, mouth, fingers: never "found"
    found = kp[..., 2] > 0
    assert np.all((kp[..., 2][found] >= 0.5) & (kp[..., 2][found] <= 1.0))
    # undo the swaps, then the residual to the clean projection is the noise (6 px at 1080 -> 3 px)
    fixed = kp.copy()
    fixed[det.swapped] = fixed[det.swapped][:, FLIP_INDEX]
    ok = fixed[..., 2] > 0
    res = (fixed[..., :2] - det.clean_uv)[ok]
    assert abs(res.std() - 3.0) < 0.2
    # a swapped view is far from the clean landmarks: the swaps are real
    sw = det.swapped[:, :, None] & (kp[..., 2] > 0) & (FLIP_INDEX != np.arange(33))
    assert np.median(np.linalg.norm(kp[..., :2] - det.clean_uv, axis=-1)[sw]) > 10

    off = S.DetectorSimConfig(bias_m=0.03, hip_offset_m=(0.02, -0.02, 0.0))
    det = simulate_detections(
        model, rig, pose[:2], out.vertices[:2].double().numpy(), out.joints[:2].double().numpy(), off, rng
    )
    o = det.offsets_m
    np.testing.assert_allclose(o[FLIP_INDEX] * [-1, 1, 1], o)  # mirrored between left and right
    assert np.abs(o).max() > 0.01  # a few cm, fixed per subject
    shift = np.linalg.norm(
        det.clean_uv
        - project(rig, torch.as_tensor(d.evaluate(out.joints[:2].double(), out.vertices[:2].double()))).numpy(),
        axis=-1,
    )
    assert np.median(shift[..., d.defined]) > 1.0  # the offsets move the landmarks in the images


def test_keypoint_init_session(tiny_keypoint_session_path, model):
    """The studio regime: a keypoint-like initial estimate, detections and masks stored."""
    from mvcap.capture import Session
    from mvcap.metrics import evaluate_body

    with Session.open(tiny_keypoint_session_path) as s:
        assert s.keypoint_format == "mediapipe_pose_33" and s.detections_written.all()
        kp = s.read_keypoints()
        assert kp.shape == (3, 4, 33, 3)
        m = s.read_masks(0)
        gt_masks = s.read_ground_truth_extras()["masks"][0]
        np.testing.assert_array_equal(m > 0.5, gt_masks > 0)
        prov = s.provenance["keypoint_init"]
        assert prov["fitted_frames"] == 3 and prov["median_keypoint_error_m"] < 0.05
        gt, init = s.read_ground_truth(), s.read_init()
    assert 0.0 < prov["dropped_frac"] < 0.25
    with torch.no_grad():
        g, p = model(**gt.to_torch()), model(**init.to_torch())
    err = evaluate_body(p.joints, g.joints, p.vertices, g.vertices)
    # keypoint-like: a few cm (the perturbed init of the same scene is ~10x worse), not exact
    assert 5.0 < err["MPJPE"] < 80.0 and err["PA-MPJPE"] < 60.0
