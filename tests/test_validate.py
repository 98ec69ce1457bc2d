"""Cross-validation without ground truth agrees with ground truth in direction."""

import numpy as np
import pytest

from mvcap.capture import Session
from mvcap.evidence import agreement, view_evidence
from mvcap.validate import (
    ValidateConfig,
    ValidateError,
    camera_verdict,
    compare_reports,
    format_report,
    load_report,
    report_path,
    save_report,
    validate_run,
)


@pytest.fixture(scope="module")
def detected_session(detected_session_path, tmp_path_factory):
    """A private copy for this module: its tests add result runs to it."""
    import shutil

    path = tmp_path_factory.mktemp("validate") / "tiny.h5"
    shutil.copy(detected_session_path, path)
    return path


def _gt_refiner(path, shift):
    with Session.open(path) as s:
        gt = s.read_ground_truth()

    def refiner(t, rig, photos, pose0, betas, transl0):
        return gt.pose_rotvecs[t], gt.transl[t] + np.asarray(shift, np.float32)

    return refiner


def test_held_out_views_rank_a_shifted_body_worse_and_the_true_body_better(detected_session, body_model, write_gt_run,
                                                                            tmp_path):  # fmt: skip
    write_gt_run(detected_session, range(3), name="gt", config={})
    cfg = ValidateConfig(frames="::1")
    true = validate_run(detected_session, "gt", cfg, model=body_model, refiner=_gt_refiner(detected_session, (0, 0, 0)),
                        progress=False)  # fmt: skip
    shifted = validate_run(detected_session, "gt", cfg, model=body_model, progress=False,
                           refiner=_gt_refiner(detected_session, (0.05, 0.0, 0.0)))  # fmt: skip
    assert [c.view for c in true.cameras] == list(Session.open(detected_session).view_names)
    for c_true, c_shift in zip(true.cameras, shifted.cameras, strict=True):
        assert c_true.frames == 3
        # the same init (fitted without the camera) in both: only the result differs
        assert c_true.init_iou == pytest.approx(c_shift.init_iou)
        assert c_true.verdict == "improved", c_true
        assert c_true.result_iou > c_true.init_iou and c_true.result_iou > 0.95
        assert c_shift.verdict == "worse", c_shift
        assert c_shift.result_iou < c_shift.init_iou
    assert true.verdict == "improved" and shifted.verdict == "worse"
    assert sorted(shifted.worse) == sorted(c.view for c in shifted.cameras)
    assert "WARNING" in format_report(shifted) and "WARNING" not in format_report(true)
    # the two runs compared check by check: the true body better in every camera, beyond doubt
    a, b = (load_report(save_report(r, tmp_path / f"{name}.json")) for r, name in ((shifted, "a"), (true, "b")))
    rows = compare_reports([(a, b)], boot=500)
    assert [r.camera for r in rows] == [c.view for c in true.cameras] + ["all"]
    assert rows[-1].checks == 3 * len(true.cameras)
    for r in rows:
        assert r.iou.low > 0 and r.keypoints.high < 0, r
        assert r.iou.low <= r.iou.mean <= r.iou.high
        assert r.iou_gain_b.mean > 0 > r.iou_gain_a.mean
    same = compare_reports([(b, b)], boot=100)[-1]
    assert same.iou == same.keypoints == type(same.iou)(0.0, 0.0, 0.0)


def test_comparing_reports_needs_shared_checks_and_can_leave_out_disputed_ones():
    def report(rows):
        agree = lambda k, i: {"keypoint_median_pct": k, "iou": i}  # noqa: E731
        return {"dispute_pct": 5.0, "holdout": [
            {"view": v, "frame": t, "init": agree(3.0, 0.7), "result": agree(k, i), "disagreement_pct": d}
            for v, t, k, i, d in rows]}  # fmt: skip

    a = report([("c0", 0, 2.0, 0.80, 1.0), ("c0", 1, 2.0, 0.80, 9.0), ("c1", 0, 2.0, 0.80, None)])
    b = report([("c0", 0, 1.0, 0.90, 1.0), ("c0", 1, 9.0, 0.10, 9.0), ("c1", 0, 1.0, 0.90, None)])
    every = {r.camera: r for r in compare_reports([(a, b)], boot=200)}
    assert every["c0"].checks == 2 and every["c0"].iou.mean == pytest.approx((0.1 - 0.7) / 2)
    kept = {r.camera: r for r in compare_reports([(a, b)], undisputed=True, boot=200)}
    assert kept["c0"].checks == 1 and kept["all"].checks == 2  # frame 1 of c0 is disputed; c1's None is not
    assert kept["all"].iou.mean == pytest.approx(0.1) and kept["all"].keypoints.mean == pytest.approx(-1.0)
    # two people's pairs pool their checks
    both = compare_reports([(a, b), (a, b)], boot=200)[-1]
    assert both.checks == 6 and both.iou.mean == pytest.approx(every["all"].iou.mean)
    with pytest.raises(ValidateError, match="share no held-out check"):
        compare_reports([(a, b), (a, report([("c2", 0, 1.0, 0.9, 1.0)]))])
    with pytest.raises(ValidateError, match="at least 100 resamples"):
        compare_reports([(a, b)], boot=10)


def test_in_view_rows_compare_stored_result_and_init_on_the_same_evidence(detected_session, body_model, write_gt_run):
    write_gt_run(detected_session, range(3), name="shifted", shift=(0.0, 0.0, 0.06), config={})
    rep = validate_run(detected_session, "shifted", ValidateConfig(frames="::1"), model=body_model, progress=False,
                       refiner=_gt_refiner(detected_session, (0, 0, 0)), holdout=["cam00"])  # fmt: skip
    assert len(rep.cameras) == 1 and rep.cameras[0].view == "cam00"
    assert len(rep.in_view) == 3 * 4
    for row in rep.in_view:  # stored result = truth + 6 cm; the stored init is the synthetic regression init
        assert np.isfinite(row.result.iou) and np.isfinite(row.result.keypoint_median_px)


def test_report_round_trips_as_json(detected_session, body_model, write_gt_run, tmp_path):
    write_gt_run(detected_session, range(3), name="gt2", config={})
    rep = validate_run(detected_session, "gt2", ValidateConfig(frames="1:3"), model=body_model, progress=False,
                       refiner=_gt_refiner(detected_session, (0, 0, 0)), holdout=["cam01"], in_view=False)  # fmt: skip
    assert rep.frames == [1, 2]
    out = save_report(rep, tmp_path / "v.json")
    back = load_report(out)
    assert back["run"] == "gt2" and back["cameras"][0]["view"] == "cam01"
    assert back["verdict"] == rep.verdict
    assert report_path("/x/take.h5", "main").name == "take.validate_main.json"


def test_agreement_of_a_perfect_body_is_perfect(detected_session, body_model):
    from mvcap.initialize import mediapipe_keypoint_definition

    with Session.open(detected_session) as s:
        gt, rig = s.read_ground_truth(), s.rig
        cam = rig.subset(["cam02"])
        ev = view_evidence(cam, s.read_keypoints([0])[0, 2], s.read_masks(0)[2], s.read_frame(0, views=["cam02"])[0])
    d = mediapipe_keypoint_definition(body_model)
    a = agreement(body_model, d, cam, gt.pose_rotvecs[0], gt.betas[0], gt.transl[0], ev)
    assert a.iou > 0.95
    assert a.keypoint_median_px < 3.0  # the detections' 1.5 px noise
    assert a.keypoints == int(d.defined.sum())
    assert np.isnan(a.photometric)  # no appearance given


def test_verdict_tolerances():
    from mvcap.evidence import Agreement
    from mvcap.validate import HoldoutRow

    def row(k_init, k_res, iou_init, iou_res):
        mk = lambda k, i: Agreement(k, k, k, k, 10, i, 0.0)  # noqa: E731
        return HoldoutRow(0, "c", mk(k_init, iou_init), mk(k_res, iou_res))

    cfg = ValidateConfig()
    assert camera_verdict("c", [row(2.0, 2.1, 0.8, 0.8)], cfg).verdict == "unchanged"
    assert camera_verdict("c", [row(2.0, 1.0, 0.8, 0.8)], cfg).verdict == "improved"
    assert camera_verdict("c", [row(2.0, 1.0, 0.8, 0.7)], cfg).verdict == "worse"  # IoU fell: worse wins
    assert camera_verdict("c", [], cfg).verdict == "no data"


def test_clear_errors(tiny_session, detected_session, body_model, write_gt_run):
    write_gt_run(tiny_session, range(3), name="gt", config={})
    with pytest.raises(ValidateError, match="mvcap detect"):
        validate_run(tiny_session, "gt", model=body_model, progress=False)
    write_gt_run(detected_session, range(3), name="gt3", config={"predictor": "flow"})
    with pytest.raises(ValidateError, match="a:b"):
        validate_run(detected_session, "gt3", ValidateConfig(frames="a:b"), model=body_model, progress=False)
    with pytest.raises(ValidateError, match="unknown camera"):
        validate_run(detected_session, "gt3", model=body_model, progress=False, holdout=["nope"])
    with pytest.raises(ValidateError, match="no frame"):
        validate_run(detected_session, "gt3", ValidateConfig(frames="50:60"), model=body_model, progress=False)


def test_a_rig_that_does_not_fit_is_named(detected_session_path, body_model, write_gt_run, tmp_path):
    import shutil

    from conftest import bump_camera

    path = tmp_path / "bumped.h5"
    shutil.copy(detected_session_path, path)
    with Session.open(path, "a") as s:  # cam01 turned since calibration: the photos and detections stay
        s.replace_rig(bump_camera(s.rig, 1, rotvec_deg=(0.0, 3.0, 0.0)))
    write_gt_run(path, range(3), name="gt", config={})
    rep = validate_run(path, "gt", ValidateConfig(frames="::1"), model=body_model, progress=False,
                       refiner=_gt_refiner(path, (0, 0, 0)), in_view=False)  # fmt: skip
    assert any(w.startswith("camera cam01:") for w in rep.rig_warnings), rep.rig_warnings
    assert "mvcap rig refine" in format_report(rep)


def test_a_view_whose_detector_swapped_left_and_right_is_measured_swapped_back(detected_session_path, body_model,
                                                                               write_gt_run, tmp_path):  # fmt: skip
    """A camera that saw the person from behind and exchanged left and right: the true body
    is not 'far from its keypoints' there, held out or in view."""
    import shutil

    from mvcap.detect import FLIP_INDEX

    path = tmp_path / "swapped.h5"
    shutil.copy(detected_session_path, path)
    with Session.open(path, "a") as s:
        kp = s.read_keypoints([1])[0]
        masks = s.read_masks(1)
        kp[1] = kp[1][FLIP_INDEX]  # cam01, frame 1
        s.write_detections(1, kp, [np.round(m * 255).astype(np.uint8) for m in masks])
    write_gt_run(path, range(3), name="gt", config={})

    def cam01_frame1(cfg):
        rep = validate_run(path, "gt", cfg, model=body_model, refiner=_gt_refiner(path, (0, 0, 0)), progress=False,
                           holdout=["cam01"])  # fmt: skip
        held = next(r for r in rep.holdout if r.frame == 1)
        in_view = next(r for r in rep.in_view if r.frame == 1 and r.view == "cam01")
        return held.result.keypoint_median_px, in_view.result.keypoint_median_px

    held, in_view = cam01_frame1(ValidateConfig(frames="::1"))
    held_raw, in_view_raw = cam01_frame1(ValidateConfig(frames="::1", undo_swaps=False))
    assert held < 4.0 and in_view < 4.0  # the detections' noise is 1.5 px
    assert held_raw > 3 * held and in_view_raw > 3 * in_view


def test_a_check_whose_detections_the_other_cameras_dispute_is_counted_and_named(detected_session_path, body_model,
                                                                                  write_gt_run, tmp_path):  # fmt: skip
    """The detector found someone else in cam01, frame 1 (its keypoints 30 % of the image
    away): that check is disputed; the clean frames' checks are not."""
    import json
    import shutil

    path = tmp_path / "disputed.h5"
    shutil.copy(detected_session_path, path)
    with Session.open(path, "a") as s:
        kp = s.read_keypoints([1])[0]
        masks = s.read_masks(1)
        kp[1, :, 0] += 0.3 * s.rig[1].width
        s.write_detections(1, kp, [np.round(m * 255).astype(np.uint8) for m in masks])
    write_gt_run(path, range(3), name="gt", config={})
    rep = validate_run(path, "gt", ValidateConfig(frames="::1"), model=body_model, progress=False,
                       refiner=_gt_refiner(path, (0, 0, 0)))  # fmt: skip
    apart = {(r.view, r.frame): r.disagreement_pct for r in rep.holdout}
    assert apart["cam01", 1] > 20 and next(c for c in rep.cameras if c.view == "cam01").disputed == 1
    # frames 0 and 2 are clean everywhere (frame 1's other checks fit with cam01: either way)
    assert max(v for (_, t), v in apart.items() if t != 1) < 5.0
    assert "cam01: in 1 of 3 checks its detections sit more than 5 % of the height off" in format_report(rep)
    assert all(c.disputed == 0 for c in rep.in_view_cameras)
    # the other cameras' keypoints against each held-out camera's: the clean frames' (median)
    assert all(0 < c.others_keypoint_pct < 5.0 for c in rep.cameras)
    assert all(np.isnan(c.others_keypoint_pct) for c in rep.in_view_cameras)
    assert "other cameras' keypoints %" in format_report(rep)
    save_report(rep, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["cameras"][1]["disputed"] == 1
