"""MediaPipe detection: the install message without the extra, and (with it) keypoints and masks
found on a small rendered session, close to the projected ground truth."""

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mvcap.capture import Session
from mvcap.detect import (
    KEYPOINT_FORMAT,
    MEDIAPIPE_POSE_33,
    DetectConfig,
    DetectError,
    mediapipe_available,
    require_mediapipe,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_without_mediapipe_the_message_says_how_to_install(monkeypatch, tiny_session):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(DetectError, match=r"pip install 'mvcap\[detect\]'.*mediapipe==0\.10\.14.*--from-npz"):
        require_mediapipe()
    assert not mediapipe_available()
    from mvcap.cli import main

    res = CliRunner().invoke(main, ["detect", str(tiny_session)])
    assert res.exit_code == 2
    assert res.output.startswith("error:") and "pip install mediapipe==0.10.14" in res.output
    with Session.open(tiny_session) as s:
        assert not s.has_detections  # nothing was written


def test_config_checks():
    with pytest.raises(ValueError, match="min_detection_confidence"):
        DetectConfig(min_detection_confidence=1.5)
    with pytest.raises(ValueError, match="model_complexity"):
        DetectConfig(model_complexity=3)


@pytest.fixture(scope="module")
def rendered_session(tmp_path_factory, body_model):
    """4 views x 3 frames of a walking subject at 256 x 256 (MediaPipe wants the person at
    least ~100 px tall; tiny.toml's 128 px is too small)."""
    pytest.importorskip("mediapipe")
    from mvcap.synth import generate_session, load_scene_config

    cfg = load_scene_config(
        CONFIGS / "bench" / "tiny.toml", ["rig.image_size=[256, 256]", "motion=walk", "blur_prob=0.0", "seed=3"]
    )
    return generate_session(tmp_path_factory.mktemp("mp") / "walk.h5", cfg, body_model, progress=False)


def test_detect_finds_the_person_near_the_ground_truth(rendered_session, body_model, tmp_path):
    from mvcap.detect import detect_session
    from mvcap.initialize import mediapipe_keypoint_definition

    path = tmp_path / "walk.h5"
    shutil.copy(rendered_session, path)
    t0 = time.perf_counter()
    res = detect_session(path, DetectConfig(), frames=[0, 1], progress=False)
    wall = time.perf_counter() - t0
    assert res.found_fraction >= 0.75 and res.skipped == 0
    res2 = detect_session(path, DetectConfig(), progress=False)  # resumes: only frame 2 is new
    assert res2.skipped == 2 and res2.frames.tolist() == [2]

    d = mediapipe_keypoint_definition(body_model)
    with Session.open(path) as s:
        assert s.keypoint_format == KEYPOINT_FORMAT and s.detections_written.all()
        kp = s.read_keypoints()  # (T, V, 33, 3)
        gt = s.read_ground_truth()
        gt_masks = s.read_ground_truth_extras()["masks"]  # (T, V, H, W)
        masks = np.stack([s.read_masks(t) for t in range(s.num_frames)])
        with torch.no_grad():
            out = body_model(**gt.to_torch())
            uv = s.rig.project(d.evaluate(out.joints.double(), out.vertices.double())).numpy()
    found = kp[..., 2].max(-1) > 0  # (T, V)
    assert found.mean() >= 0.75
    sel = found[..., None] & (kp[..., 2] > 0.5) & d.defined
    err = np.linalg.norm(kp[..., :2] - uv, axis=-1)[sel]
    body_px = np.ptp(uv[..., 1], axis=-1)[found].mean()
    per_kp = {n: float(np.median(np.linalg.norm(kp[..., k, :2] - uv[..., k, :], axis=-1)[sel[..., k]]))
              for k, n in enumerate(MEDIAPIPE_POSE_33) if sel[..., k].any()}  # fmt: skip
    inter = ((masks > 0.5) & (gt_masks > 0))[found].sum()
    union = ((masks > 0.5) | (gt_masks > 0))[found].sum()
    print(
        f"\nmediapipe on 256 px renders: found {100 * found.mean():.0f}% of views, median keypoint error "
        f"{np.median(err):.1f} px (person ~{body_px:.0f} px tall), mask IoU {inter / union:.2f}, "
        f"{res.ms_per_image:.0f} ms per image ({wall:.1f} s with model loading)\n"
        + ", ".join(f"{n} {v:.1f}" for n, v in per_kp.items())
    )
    assert np.median(err) < 0.05 * body_px  # measured ~2 % of the person's height
    assert inter / union > 0.6
