"""mvcap.evidence: a body measured against one view's evidence, rendered only where it can be."""

import numpy as np
import pytest
import torch

from mvcap.cameras import Camera, Rig
from mvcap.evidence import ViewEvidence, agreement, body_box
from mvcap.render import render


def _camera(width=200, height=160, cx=None) -> Rig:
    """One camera 3 m in front of the origin, looking at it along -Z."""
    K = np.array([[180.0, 0, width / 2 - 0.5 if cx is None else cx], [0, 180.0, height / 2 - 0.5], [0, 0, 1]])
    return Rig((Camera("c", K, np.zeros(5), np.diag([1.0, -1.0, -1.0]), np.array([0.0, 0.0, 3.0]),
                       (width, height)),))  # fmt: skip


def _full_image_reference(rig, verts, faces, mask, photo, appearance):
    """IoU and photometric error from a render of the whole image (the old way)."""
    _, rp = render(rig, verts, faces, passes=("albedo", "mask"), **appearance.render_kwargs())
    body = rp.get("mask")[0, ..., 0].numpy() > 0.5
    iou = np.logical_and(body, mask).sum() / np.logical_or(body, mask).sum()
    albedo = rp.get("albedo")[0].numpy()[body] * 255.0
    return float(iou), float(np.abs(albedo - photo[body].astype(np.float32)).mean())


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.9, 0.3), (-1.3, 0.0)], ids=["inside", "across", "mostly out"])
def test_agreement_in_the_body_window_equals_the_whole_image(body_model, shift):
    from mvcap.keypoints import keypoint_set
    from mvcap.refine import Appearance

    rig = _camera()
    rng = np.random.default_rng(0)
    pose = torch.zeros(24, 3)
    transl = torch.tensor([shift[0], shift[1], 0.0])
    with torch.no_grad():
        verts = body_model(pose[None], None, transl[None]).vertices[0]
    colors = torch.as_tensor(rng.integers(0, 256, (body_model.num_vertices, 3)), dtype=torch.uint8)
    appearance = Appearance(vertex_colors=colors)
    mask = np.zeros((160, 200), bool)
    mask[30:140, 60 + int(shift[0] * 60) : 140 + int(shift[0] * 60)] = True  # a detector's person mask
    mask[:5, :5] = True  # and a blob far from the body: counted in the union
    photo = rng.integers(0, 256, (160, 200, 3)).astype(np.uint8)
    definition = keypoint_set("coco_17").definition(body_model)
    with torch.no_grad():
        out = body_model(pose[None], None, transl[None])
        uv = rig.project(definition.evaluate(out.joints.double(), out.vertices.double()))[0, 0].numpy()
    kp = np.concatenate([uv + rng.normal(0, 3.0, uv.shape), np.ones((len(uv), 1))], 1).astype(np.float32)
    ev = ViewEvidence(kp, mask, photo, 120.0)
    got = agreement(body_model, definition, rig, pose, torch.zeros(10), transl, ev, appearance)
    iou, photometric = _full_image_reference(rig, verts, body_model.faces, mask, photo, appearance)
    assert got.iou == pytest.approx(iou, abs=1e-12) and got.photometric == pytest.approx(photometric, rel=1e-6)
    d = np.linalg.norm(uv - kp[:, :2], axis=1)[definition.defined]  # every defined landmark is scored
    assert got.keypoints == definition.defined.sum() and got.keypoint_median_px == pytest.approx(np.median(d), rel=1e-4)
    assert got.keypoint_median_pct == pytest.approx(100 * got.keypoint_median_px / 120.0)  # % of the person
    x0, y0, w, h = body_box(rig, verts)
    assert w < 200 or h < 160  # a window, not the whole image


def test_body_box_holds_the_body_and_falls_back_near_the_camera(body_model):
    rig = _camera()
    with torch.no_grad():
        verts = body_model(torch.zeros(1, 24, 3)).vertices[0]
    full = render(rig, verts, body_model.faces, passes=("mask",))[0].mask[0].numpy()
    ys, xs = np.nonzero(full)
    x0, y0, w, h = body_box(rig, verts)
    assert x0 <= xs.min() and xs.max() < x0 + w and y0 <= ys.min() and ys.max() < y0 + h
    assert w <= xs.max() - xs.min() + 5 and h <= ys.max() - ys.min() + 5  # a pixel or two to spare a side
    assert body_box(rig, verts + torch.tensor([0.0, 0.0, 2.95])) == (0, 0, 200, 160)  # 5 cm from it
    assert body_box(rig, verts + torch.tensor([9.0, 0.0, 0.0])) == (0, 0, 0, 0)  # beside the image
    assert body_box(rig, verts + torch.tensor([0.0, 0.0, 9.0])) == (0, 0, 200, 160)  # behind it: the whole image
