import numpy as np
import pytest

from mvcap.capture import Session, SessionError
from mvcap.overlay import OverlayConfig, draw_arrows, draw_overlay, session_overlays


def test_draw_overlay_blends_only_inside_mask():
    photo = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 15:35] = True
    out = draw_overlay(photo, np.ones((40, 50)), mask, OverlayConfig(outline=False, alpha=1.0, body_color=(200, 0, 0)))
    assert (out[~mask] == 100).all()
    assert out[20, 25, 0] > 200 and out[20, 25, 1] == 0
    outlined = draw_overlay(photo, np.ones((40, 50)), mask, OverlayConfig(alpha=0.0, outline_color=(0, 255, 0)))
    edge = outlined[10, 15:35]
    assert (edge[:, 1] > 150).any(), "silhouette outline missing"
    assert (outlined[20, 25] == 100).all()


def test_draw_arrows_points_along_flow():
    img = np.zeros((60, 60, 3), np.uint8)
    flow = np.zeros((60, 60, 2), np.float32)
    flow[..., 0] = 8.0  # everything moves right
    mask = np.zeros((60, 60), bool)
    mask[25:35, 10:20] = True
    out = draw_arrows(img, flow, mask, OverlayConfig(arrow_step_px=10, arrow_color=(0, 255, 0)))
    ys, xs = np.nonzero(out[..., 1])
    # one grid column inside the mask (x = 15): arrows from x = 15 to x = 23
    assert xs.size and xs.min() >= 14 and 22 <= xs.max() <= 25
    with pytest.raises(ValueError, match="uint8"):
        draw_arrows(img.astype(float), flow, mask)


def test_session_overlays_writes_before_after(tiny_session, tmp_path, write_gt_run):
    write_gt_run(tiny_session, [0, 2])
    out = session_overlays(tiny_session, "fake", tmp_path / "ov", video=True, progress=False)
    assert out.frames == [0, 2]
    with Session.open(tiny_session) as s:
        (w, h), names = s.rig[0].image_size, s.view_names
    assert sorted(out.pngs) == sorted(names)
    import cv2

    img = cv2.imread(str(out.pngs[names[0]][0]))
    assert img.shape == (h, 2 * w, 3)  # before | after
    cap = cv2.VideoCapture(str(out.videos[names[0]]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    cap.release()
    with pytest.raises(SessionError, match=r"frames \[1\].*no result.*0, 2"):
        session_overlays(tiny_session, "fake", tmp_path / "ov2", frames=[1], progress=False)
    with pytest.raises(SessionError, match="no results run 'nope'"):
        session_overlays(tiny_session, "nope", tmp_path / "ov3", progress=False)


def test_overlay_arrows_from_oracle(tiny_session, tmp_path, write_gt_run):
    with Session.open(tiny_session) as s:
        gt = s.read_ground_truth()
    write_gt_run(tiny_session, [0])
    plain = session_overlays(tiny_session, "fake", tmp_path / "a", frames=[0], progress=False)
    arrows = session_overlays(tiny_session, "fake", tmp_path / "b", frames=[0], progress=False, arrows="oracle")
    import cv2

    a = cv2.imread(str(plain.pngs["cam00"][0]))
    b = cv2.imread(str(arrows.pngs["cam00"][0]))
    w = a.shape[1] // 2
    assert (a[:, w:] == b[:, w:]).all()  # the "after" half has no arrows
    assert (a[:, :w] != b[:, :w]).any(), "the init is off the truth: the oracle field must draw arrows"
    assert gt.pose_rotvecs.shape[0] == 3
    with pytest.raises(SessionError, match="arrows must be"):
        session_overlays(tiny_session, "fake", tmp_path / "c", frames=[0], progress=False, arrows="magic")
