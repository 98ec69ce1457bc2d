"""Cameras of different image sizes in one session: ingest, render, detect, init, refine, overlay."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from conftest import detect_from_ground_truth

from mvcap.cameras import Rig
from mvcap.capture import Session, SessionError
from mvcap.fit import FitConfig
from mvcap.metrics import evaluate_body
from mvcap.refine import RefineConfig, refine_session
from mvcap.render import canvas_size, pad_views, rasterize, render, undistort_images

CROP = 16  # cam01: the 128x128 image with 16 rows cut off above and below -> 128x96
SMALL = (96, 96)  # cam03: the 128x128 image rescaled


def _mixed_rig(rig: Rig) -> Rig:
    """The tiny session's rig with cam01 cropped (principal point shifted) and cam03 rescaled."""
    cams = list(rig.cameras)
    K = cams[1].K.copy()
    K[1, 2] -= CROP
    cams[1] = dataclasses.replace(cams[1], K=K, image_size=(cams[1].width, cams[1].height - 2 * CROP))
    cams[3] = Rig((cams[3],)).with_image_size(SMALL)[0]
    return Rig(tuple(cams))


def _mixed_frame(images: np.ndarray) -> list[np.ndarray]:
    """(V, 128, 128, 3) frames of the tiny session -> the mixed rig's per-view images."""
    out = list(images)
    out[1] = out[1][CROP:-CROP]
    out[3] = cv2.resize(out[3], SMALL, interpolation=cv2.INTER_AREA)
    return out


@pytest.fixture(scope="module")
def mixed_session_path(tiny_session_path, body_model, tmp_path_factory):
    """The tiny session (3 frames, 4 views) re-made with views of three sizes (128x128, 128x96,
    96x96) by ingesting image folders against the mixed rig, with its subject, ground truth and
    initial estimates, and detector-like evidence from ground truth (read-only template)."""
    from mvcap.ingest import ingest
    from mvcap.rigio import save_rig

    root = tmp_path_factory.mktemp("mixed")
    with Session.open(tiny_session_path) as s:
        rig, T = s.rig, s.num_frames
        frames = [_mixed_frame(s.read_frame(t)) for t in range(T)]
        subject, gt, init = s.subject, s.read_ground_truth(), s.read_init()
    mixed = _mixed_rig(rig)
    for v, name in enumerate(mixed.names):
        (root / "src" / name).mkdir(parents=True)
        for t in range(T):
            cv2.imwrite(str(root / "src" / name / f"{t:06d}.png"), cv2.cvtColor(frames[t][v], cv2.COLOR_RGB2BGR))
    save_rig(mixed, root / "rig.toml")
    path = ingest(root / "src", root / "rig.toml", root / "mixed.h5", progress=False).path
    with Session.open(path, "a") as s:
        s.write_subject(subject)
        s.write_ground_truth(gt)
        s.write_init(init.pose_rotvecs, init.betas, init.transl)
    detect_from_ground_truth(path, body_model)
    return path


@pytest.fixture
def mixed_session(mixed_session_path, tmp_path):
    import shutil

    dst = tmp_path / "mixed.h5"
    shutil.copy(mixed_session_path, dst)
    return dst


def test_session_reads_views_at_their_own_sizes(mixed_session_path):
    with Session.open(mixed_session_path) as s:
        assert s.image_sizes == {"cam00": (128, 128), "cam01": (128, 96), "cam02": (128, 128), "cam03": (96, 96)}
        with pytest.raises(SessionError, match="different image sizes"):
            _ = s.image_size
        imgs, masks = s.read_frame(0), s.read_masks(0)
        assert [im.shape for im in imgs] == [(128, 128, 3), (96, 128, 3), (128, 128, 3), (96, 96, 3)]
        assert [m.shape for m in masks] == [(128, 128), (96, 128), (128, 128), (96, 96)]
        assert s.read_frame(0, views=["cam00", "cam02"]).shape == (2, 128, 128, 3)  # one size: an array
        canvas = pad_views(imgs)
        assert canvas.shape == (4, 128, 128, 3) and canvas[1, 96:].max() == 0 and canvas[3, :, 96:].max() == 0
        np.testing.assert_array_equal(canvas[1, :96], imgs[1])


def test_render_each_view_at_its_own_size_on_the_canvas(mixed_session_path, tiny_session_path, body_model):
    """The cropped view renders exactly the crop of the full view's render, the rescaled view
    the body where the rescaled camera sees it; beyond each view's image the canvas is empty."""
    with Session.open(tiny_session_path) as s:
        rig, gt = s.rig.without_distortion(), s.read_ground_truth()
    mixed = _mixed_rig(rig)
    with torch.no_grad():
        verts = body_model(**gt.slice(0).to_torch()).vertices[0]
    full = rasterize(rig, verts, body_model.faces, backend="cpu")
    frags, passes = render(mixed, verts, body_model.faces, passes=("depth", "mask"), backend="cpu")
    assert canvas_size(mixed) == (128, 128) and tuple(frags.face_ids.shape) == (4, 128, 128)
    for v in (0, 2):
        assert torch.equal(frags.face_ids[v], full.face_ids[v])
    assert torch.equal(frags.face_ids[1, :96], full.face_ids[1, CROP:-CROP])
    assert (frags.face_ids[1, 96:] == -1).all() and (frags.face_ids[3, 96:] == -1).all()
    assert (frags.face_ids[3, :, 96:] == -1).all() and not passes.get("mask")[3, :, 96:].any()
    small = rasterize(Rig((mixed[3],)), verts, body_model.faces, backend="cpu")
    assert torch.equal(frags.face_ids[3, :96, :96], small.face_ids[0])
    # the same silhouette area (in the full image's pixels) in the rescaled view
    area = full.mask[3].sum().item()
    assert abs(frags.mask[3].sum().item() * (128 / 96) ** 2 - area) < 0.03 * area
    # photos on the canvas: undistorted per view, nothing beyond each view's image
    with Session.open(mixed_session_path) as s:
        photos = undistort_images(s.rig, pad_views(s.read_frame(0)))
    assert photos.shape == (4, 128, 128, 3) and photos[1, 96:].max() == 0 and photos[1, :96].max() > 0


def _pve(model, params, gt, t):
    with torch.no_grad():
        a = model(**params.slice([t]).to_torch())
        b = model(**gt.slice([t]).to_torch())
    return evaluate_body(a.joints, b.joints, a.vertices, b.vertices)["PVE"]


def test_refine_init_overlay_chain(mixed_session, body_model, tmp_path):
    from mvcap.initialize import InitConfig, initialize_session
    from mvcap.overlay import session_overlays

    with Session.open(mixed_session) as s:
        gt, init = s.read_ground_truth(), s.read_init()
    # refine from the regressor-like initial estimate: the flow predictor compares renders and
    # photos in views of every size, and the detections' keypoints and masks guard the result
    cfg = RefineConfig(predictor="flow", outer_iterations=2, fit=FitConfig(iterations=30))
    events: dict = {}
    res = refine_session(mixed_session, "flow", cfg, frames=[0], model=body_model, progress=False, events=events)
    assert res.done[0] and np.isfinite(res.residual_px[0]).all() and not events["kept"]
    assert _pve(body_model, res.params, gt, 0) < 0.8 * _pve(body_model, init, gt, 0)
    out = session_overlays(mixed_session, "flow", tmp_path / "ov", frames=[0], model=body_model, progress=False)
    sizes = {v: cv2.imread(str(p[0])).shape[:2] for v, p in out.pngs.items()}
    # before | after, each at the view's own size
    assert sizes == {"cam00": (128, 256), "cam01": (96, 256), "cam02": (128, 256), "cam03": (96, 192)}
    # the keypoint init (with the mask term) from the detections of views of every size
    summary = initialize_session(
        mixed_session, InitConfig(w_mask=1.0), frames=[0], overwrite=True, progress=False, model=body_model
    )
    assert summary.fitted.all()
    with Session.open(mixed_session) as s:
        assert _pve(body_model, s.read_init(), gt, 0) < 60  # mm


def test_register_validate_report(mixed_session, body_model, tmp_path, write_gt_run):
    from mvcap.initialize import InitConfig
    from mvcap.register import RegisterConfig, ShapeFitConfig, TextureConfig, register_subject
    from mvcap.report import ReportConfig, build_report
    from mvcap.validate import ValidateConfig, validate_run

    cfg = RegisterConfig(num_frames=2, shape=ShapeFitConfig(rounds=2, iterations=8), texture=TextureConfig(size=64))
    reg = register_subject(mixed_session, "mixed", cfg, model=body_model, progress=False)
    # a short fit from the perturbed init: the cropped and rescaled views (1, 3) agree with the body
    # as well as the full-size ones (0, 2) (masks and renders on one canvas, each view in its corner)
    iou = reg.shape.silhouette_iou
    assert iou.shape == (2, 4) and iou.min() > 0.7 and iou[:, [1, 3]].mean() > iou[:, [0, 2]].mean() - 0.05
    assert reg.appearance.coverage > 0.5
    write_gt_run(mixed_session, range(3), name="gt", config={})
    with Session.open(mixed_session) as s:
        gt = s.read_ground_truth()

    def refiner(t, rig, photos, pose0, betas, transl0):  # the truth: it must agree with every held-out view
        assert photos.shape == (3, *canvas_size(rig)[::-1], 3)
        return gt.pose_rotvecs[t], gt.transl[t]

    vcfg = ValidateConfig(frames="0:1", init=InitConfig(iterations=15, yaw_starts=2, w_mask=1.0))  # short, with masks
    rep = validate_run(mixed_session, "gt", vcfg, ["cam01", "cam03"], model=body_model, refiner=refiner,
                       progress=False, in_view=False)  # fmt: skip
    assert [c.view for c in rep.cameras] == ["cam01", "cam03"]  # the cropped and the rescaled camera held out
    assert all(c.result_iou > 0.9 for c in rep.cameras), rep.cameras
    small = ReportConfig(overlay_frames=1, turntable_frames=1, turntable_steps=4, turntable_size=96)
    out = build_report(mixed_session, "gt", tmp_path / "report.html", small)
    assert out.exists() and "cam03" in out.read_text()
