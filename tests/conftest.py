"""Shared fixtures: the embedded body model and a tiny synthetic session."""

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="session")
def body_model():
    from mvcap.body import load_body_model

    return load_body_model()


@pytest.fixture(scope="session")
def tiny_session_path(tmp_path_factory, body_model):
    """A 1-subject x 3-frame, 4-view, 128x128 synthetic session with ground truth (read-only
    template: tests that write results copy it first)."""
    from mvcap.synth import generate_benchmark, load_scene_config

    cfg = load_scene_config(CONFIGS / "bench" / "tiny.toml")
    return generate_benchmark(tmp_path_factory.mktemp("tiny"), cfg, body_model, progress=False)[0]


@pytest.fixture(scope="session")
def detected_session_path(tiny_session_path, body_model, tmp_path_factory):
    """The tiny session with detector-like evidence from ground truth (:func:`detect_from_ground_truth`;
    read-only template: tests that write copy it first)."""
    import shutil

    path = tmp_path_factory.mktemp("detected") / "tiny.h5"
    shutil.copy(tiny_session_path, path)
    detect_from_ground_truth(path, body_model)
    return path


@pytest.fixture
def tiny_session(tiny_session_path, tmp_path):
    """A private, writable copy of the tiny session."""
    import shutil

    dst = tmp_path / "tiny.h5"
    shutil.copy(tiny_session_path, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_keypoint_session_path(tmp_path_factory, body_model):
    """The tiny session in the studio regime: its initial estimate comes from simulated
    detections (stored in the session) through triangulation and the init fit (read-only)."""
    from mvcap.synth import generate_benchmark, load_scene_config

    cfg = load_scene_config(CONFIGS / "bench" / "tiny.toml", ["init=keypoints", "motion=walk", "fps=5.0"])
    return generate_benchmark(tmp_path_factory.mktemp("tiny_kp"), cfg, body_model, progress=False)[0]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Small tensors: one thread is as fast and never spin-waits on a shared CI machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def write_gt_run():
    """A function writing a results run from ground truth (see :func:`_write_gt_run`)."""
    return _write_gt_run


def _write_gt_run(path, frames, shift=(0.0, 0.0, 0.0), name="fake", config=None):
    """Write results run ``name`` = ground truth shifted by ``shift`` metres for ``frames``,
    residual_px = view index, 7 iterations, 0.25 s per frame."""
    import numpy as np

    from mvcap.capture import Session

    with Session.open(path, "a") as s:
        gt = s.read_ground_truth()
        w = s.results_run(name, config=config or {"predictor": "test"})
        for t in frames:
            w.write(t, gt.pose_rotvecs[t], gt.betas[t], gt.transl[t] + np.asarray(shift, np.float32),
                    residual_px=np.arange(s.num_views, dtype=np.float32), iterations=7, seconds=0.25)  # fmt: skip


def detect_from_ground_truth(path, model, noise_px=1.5, seed=0):
    """Detector-like evidence from ground truth: the MediaPipe landmarks on our mesh projected
    into every view with pixel noise, and the true silhouettes as person masks."""
    import numpy as np
    import torch

    from mvcap.cameras import project
    from mvcap.capture import Session
    from mvcap.initialize import mediapipe_keypoint_definition
    from mvcap.render import render
    from mvcap.synth import distort_image

    rng = np.random.default_rng(seed)
    definition = mediapipe_keypoint_definition(model)
    with Session.open(path, "a") as s:
        rig, gt = s.rig, s.read_ground_truth()
        for t in range(s.num_frames):
            with torch.no_grad():
                out = model(**gt.slice(t).to_torch(dtype=torch.float32))
                kp3 = definition.evaluate(out.joints.double(), out.vertices.double())[0]
                uv = project(rig, kp3).numpy() + rng.normal(scale=noise_px, size=(len(rig), len(definition.names), 2))
                _, rp = render(rig.without_distortion(), out.vertices[0], model.faces, passes=("mask",))
            conf = np.broadcast_to(definition.defined.astype(np.float32), uv.shape[:2])[..., None]
            masks = [  # each view's own pixels of the render (cameras may differ in size)
                distort_image((rp.get("mask")[v, : cam.height, : cam.width, 0].numpy() * 255).astype(np.uint8), cam)
                for v, cam in enumerate(rig)
            ]
            s.write_detections(t, np.concatenate([uv, conf], -1), masks)


def bump_camera(rig, view: int, rotvec_deg=(0.0, 0.0, 0.0), move_m=(0.0, 0.0, 0.0)):
    """The rig with camera ``view`` turned by ``rotvec_deg`` (degrees, world axes) and its centre
    moved by ``move_m``: a calibration that no longer fits the photos (:mod:`mvcap.rigrefine`)."""
    from dataclasses import replace

    import numpy as np
    import roma
    import torch

    from mvcap.cameras import Rig

    cams = list(rig)
    c = cams[view]
    R = (roma.rotvec_to_rotmat(torch.tensor(np.radians(rotvec_deg))).numpy() @ c.R_world2cam.T).T
    centre = c.center_world + np.asarray(move_m)
    cams[view] = replace(c, R_world2cam=R, t_world2cam=-R @ centre)
    return Rig(tuple(cams))
