"""The refinement's safeguards: keypoint/silhouette cues, view trust, dead cameras, the
acceptance guard and failure states (each test fails if the state were reported as done)."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from mvcap.body import BodyParams
from mvcap.capture import Session
from mvcap.cues import CueConfig, carrying_view, dead_views, guard_objections, view_trust
from mvcap.displace import Displacement, OraclePredictor
from mvcap.fit import FitConfig
from mvcap.keypoints import keypoint_set
from mvcap.metrics import evaluate_body
from mvcap.refine import (
    PredictorSchedule,
    RefineConfig,
    RefineError,
    estimate_appearance,
    frame_evidence,
    load_frame_inputs,
    refine_frame,
    refine_session,
)

FAST = RefineConfig(predictor="flow", outer_iterations=2, fit=FitConfig(iterations=25))


@pytest.fixture
def session(detected_session_path, tmp_path):
    dst = tmp_path / "s.h5"
    shutil.copy(detected_session_path, dst)
    return dst


class _ShiftPredictor:
    """A predictor that is confidently wrong: every pixel moves ``shift`` pixels."""

    name = "shift"

    def __init__(self, shift=(12.0, 0.0), value=None):
        self.shift, self.value = shift, value

    def __call__(self, req):
        V, H, W = req.photos.shape[:3]
        flow = torch.empty(V, H, W, 2)
        flow[...] = torch.tensor(self.shift) if self.value is None else self.value
        return Displacement(flow, torch.ones(V, H, W))


def _frame(session, t, model):
    s = Session.open(session)
    inputs = load_frame_inputs(s, t)
    definition = keypoint_set(s.keypoint_format).definition(model)
    ev = frame_evidence(s, t, inputs.rig)
    app = estimate_appearance(model, s.subject)
    gt = s.read_ground_truth()
    s.close()
    return inputs, ev, definition, app, gt


def _pve(model, params, gt, t):
    with torch.no_grad():
        a = model(**params.to_torch())
        b = model(**gt.slice(t).to_torch())
    return evaluate_body(a.joints, b.joints, a.vertices, b.vertices)["PVE"]


def test_guard_keeps_the_estimate_when_targets_are_confidently_wrong(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 0, body_model)
    start = BodyParams(gt.pose_rotvecs[:1], inputs.init.betas, gt.transl[:1])  # a perfect start
    bad = _ShiftPredictor((15.0, 0.0))
    no_guard = dataclasses.replace(FAST, cues=CueConfig(guard=False, w_keypoints=0, w_silhouette=0))
    off = refine_frame(body_model, inputs.rig, inputs.photos, start, bad, no_guard, app)
    guard_only = dataclasses.replace(FAST, cues=CueConfig(field_check=False))  # the field check would catch it first
    guarded = refine_frame(body_model, inputs.rig, inputs.photos, start, bad, guard_only, app, None, ev, definition)
    p_off = BodyParams(off.pose_rotvecs[None], off.betas[None], off.transl[None])
    p_on = BodyParams(guarded.pose_rotvecs[None], guarded.betas[None], guarded.transl[None])
    assert _pve(body_model, p_off, gt, 0) > 10  # unguarded, the wrong targets drag the body away
    assert guarded.status == "kept" and any("rejected" in n for n in guarded.notes)
    assert _pve(body_model, p_on, gt, 0) < 1.0  # guarded, the perfect start stays
    assert guarded.evidence_cost[1] <= guarded.evidence_cost[0]


def test_keypoint_and_silhouette_cues_alone_bring_a_shifted_body_back(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 1, body_model)
    start = BodyParams(gt.pose_rotvecs[1:2], inputs.init.betas, gt.transl[1:2] + np.float32([0.06, 0.0, 0.04]))
    cues_only = dataclasses.replace(FAST, fit=FitConfig(iterations=25, w_data=0.0))  # no dense term
    res = refine_frame(body_model, inputs.rig, inputs.photos, start, _ShiftPredictor((0.0, 0.0)), cues_only, app,
                       None, ev, definition)  # fmt: skip
    after = BodyParams(res.pose_rotvecs[None], res.betas[None], res.transl[None])
    assert res.status == "done"
    assert _pve(body_model, after, gt, 1) < 0.6 * _pve(body_model, start, gt, 1)
    assert res.evidence_cost[1] < res.evidence_cost[0]


def test_dead_camera_is_named_and_ignored(session, body_model):
    with Session.open(session, "a") as s:
        for t in range(s.num_frames):
            imgs = s.read_frame(t)
            imgs[2] = 0
            s.write_frame(t, imgs)
    events = {}
    res = refine_session(session, "dead", FAST, frames=[0], model=body_model, progress=False, failures=[],
                         events=events)  # fmt: skip
    assert res.done[0]
    assert events["dead_views"] == {"cam02": [0]}
    assert dead_views(np.zeros((2, 8, 8, 3), np.uint8)) == [0, 1]


def test_body_out_of_every_view_is_a_failure_not_done(session, body_model):
    with Session.open(session, "a") as s:
        init = s.read_init()
        init.transl[0] += np.float32([0.0, 60.0, 0.0])  # far above every camera
        s.write_init(init.pose_rotvecs, init.betas, init.transl)
    failures = []
    res = refine_session(session, "away", FAST, frames=[0], model=body_model, progress=False, failures=failures)
    assert not res.done[0]
    assert failures and failures[0][0] == 0 and "out of view" in failures[0][1]
    with pytest.raises(RefineError, match="out of view"):
        refine_session(session, "away2", FAST, frames=[0], model=body_model, progress=False)


def test_diverged_fit_is_a_failure_not_done(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 0, body_model)
    res = refine_frame(body_model, inputs.rig, inputs.photos, inputs.init, _ShiftPredictor(value=float("nan")), FAST,
                       app)  # fmt: skip
    assert res.status == "diverged" and res.failed
    assert np.isfinite(res.pose_rotvecs).all()  # the estimate before the failed round is what comes back


def test_previous_result_that_drifted_falls_back_to_the_frames_own_estimate(session, body_model):
    from mvcap.config import to_dict

    cfg = dataclasses.replace(FAST, init="previous")
    with Session.open(session, "a") as s:  # frame 0's stored result is 40 cm off; the run resumes after it
        w = s.results_run("seq", config=to_dict(cfg))
        gt = s.read_ground_truth()
        w.write(0, gt.pose_rotvecs[0], gt.betas[0], gt.transl[0] + np.float32([0.4, 0, 0]),
                residual_px=np.zeros(s.num_views, np.float32), iterations=1, seconds=0.1)  # fmt: skip
    events = {}
    refine_session(session, "seq", cfg, frames=[0, 1], model=body_model, progress=False, failures=[], events=events)
    assert events["previous_rejected"] == [1]


def test_view_trust_down_weights_the_odd_view_out():
    w = view_trust(np.array([0.05, 0.06, 0.05, 0.9]), ratio=2.5)
    assert w[:3].tolist() == [1.0, 1.0, 1.0] and w[3] < 0.1
    assert view_trust(np.array([np.nan, 0.5]), 2.5).tolist() == [1.0, 1.0]


class _ShrinkPredictor:
    """Confidently wrong in depth: every pixel moves towards the body's centre in its view, as
    if the person were 1 / (1 - ``factor``) times farther away."""

    name = "shrink"

    def __init__(self, factor=0.2):
        self.factor = factor

    def __call__(self, req):
        V, H, W = req.photos.shape[:3]
        ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                                indexing="ij")  # fmt: skip
        flow = torch.zeros(V, H, W, 2)
        for v in range(V):
            m = req.fragments.mask[v] > 0
            cx, cy = xs[m].mean(), ys[m].mean()
            flow[v, ..., 0], flow[v, ..., 1] = -self.factor * (xs - cx), -self.factor * (ys - cy)
        return Displacement(flow, torch.ones(V, H, W))


def test_single_view_depth_is_held_to_the_init(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 0, body_model)
    one = inputs.rig.subset(["cam01"])
    photos = inputs.photos[1:2]
    R, t = one.cameras[0].R_world2cam, one.cameras[0].t_world2cam

    def depth(res):
        with torch.no_grad():
            root = body_model(**BodyParams(res.pose_rotvecs[None], res.betas[None], res.transl[None]).to_torch())
        return float((R @ root.joints[0].numpy().astype(np.float64).mean(0) + t)[2])

    with torch.no_grad():
        z0 = float((R @ body_model(**inputs.init.to_torch()).joints[0].numpy().astype(np.float64).mean(0) + t)[2])
    free = dataclasses.replace(FAST, cues=CueConfig(w_depth_hold=0.0))
    runaway = refine_frame(body_model, one, photos, inputs.init, _ShrinkPredictor(), free, app)
    held = refine_frame(body_model, one, photos, inputs.init, _ShrinkPredictor(), FAST, app)
    assert depth(runaway) / z0 > 1.2  # the targets alone pull the body >20 % farther away (measured: 50 %)
    assert abs(depth(held) / z0 - 1) < 0.03  # held (measured: 0.1 %)


def test_keypoints_and_masks_no_body_agrees_with_are_a_failure_not_done(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 0, body_model)
    # every camera's detections belong to someone 60 % of the picture to the side
    moved = []
    for e in ev:
        W = e.mask.shape[1]
        shift = int(0.6 * W)
        kp = e.keypoints.copy()
        kp[:, 0] += shift
        moved.append(dataclasses.replace(e, keypoints=kp, mask=np.roll(e.mask, shift, axis=1)))
    res = refine_frame(body_model, inputs.rig, inputs.photos, inputs.init, _ShiftPredictor((0.0, 0.0)), FAST, app,
                       None, moved, definition)  # fmt: skip
    assert res.status == "contradictory evidence" and res.failed
    assert any("no body agrees" in n for n in res.notes)
    ok = refine_frame(body_model, inputs.rig, inputs.photos, inputs.init, _ShiftPredictor((0.0, 0.0)), FAST, app,
                      None, ev, definition)  # fmt: skip
    assert not ok.failed


class _ViewsShift(_ShiftPredictor):
    """Zero displacement everywhere but in some views, which are confidently shifted."""

    def __init__(self, views, shift=(30.0, 0.0)):
        super().__init__(shift)
        self.views = list(views)

    def __call__(self, req):
        out = super().__call__(req)
        keep = torch.ones(out.flow.shape[0], dtype=torch.bool)
        keep[self.views] = False
        out.flow[keep] = 0.0
        return out


def test_field_check_drops_targets_that_move_landmarks_off_the_keypoints(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 0, body_model)
    start = BodyParams(gt.pose_rotvecs[:1], inputs.init.betas, gt.transl[:1])
    bad = _ViewsShift([1, 2], (12.0, 0.0))
    cues = CueConfig(guard=False, w_keypoints=0, w_silhouette=0, field_check=False)  # the check alone holds the body
    off = refine_frame(body_model, inputs.rig, inputs.photos, start, bad, dataclasses.replace(FAST, cues=cues),
                       app, None, ev, definition)  # fmt: skip
    on_cfg = dataclasses.replace(FAST, cues=dataclasses.replace(cues, field_check=True))
    on = refine_frame(body_model, inputs.rig, inputs.photos, start, bad, on_cfg, app, None, ev, definition)
    dropped = " ".join(n for n in on.notes if "dense targets dropped" in n)
    assert inputs.rig.names[1] in dropped and inputs.rig.names[2] in dropped
    assert not any(inputs.rig.names[v] in dropped for v in (0, 3))  # the honest views keep theirs
    p_off = BodyParams(off.pose_rotvecs[None], off.betas[None], off.transl[None])
    p_on = BodyParams(on.pose_rotvecs[None], on.betas[None], on.transl[None])
    assert _pve(body_model, p_off, gt, 0) > 10.0  # followed, the shifted views pull the body away
    assert _pve(body_model, p_on, gt, 0) < 3.0  # the honest views hold it


def test_a_field_that_disagrees_everywhere_keeps_the_estimate(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 0, body_model)
    start = BodyParams(gt.pose_rotvecs[:1], inputs.init.betas, gt.transl[:1])
    cfg = dataclasses.replace(FAST, cues=CueConfig(field_check=True))
    res = refine_frame(body_model, inputs.rig, inputs.photos, start, _ShiftPredictor((30.0, 20.0)), cfg, app,
                       None, ev, definition)  # fmt: skip
    assert res.status == "kept" and any("no dense target agrees" in n for n in res.notes)
    assert np.allclose(res.pose_rotvecs, start.pose_rotvecs[0]) and np.isfinite(res.residual_px).all()


def test_carrying_view_names_the_one_view_an_update_helps_alone():
    old = np.array([0.10, 0.10, 0.10, 0.30])
    assert carrying_view(old + [0.002, 0.001, 0.002, -0.15], old, np.ones(4)) == 3  # the others got worse
    assert carrying_view(old + [-0.01, 0.001, -0.01, -0.15], old, np.ones(4)) is None  # the others agree
    assert carrying_view(old + [0.002, np.nan, 0.002, -0.15], old, np.array([1, 1, 0, 1])) is None  # < 3 views
    assert carrying_view(old + [0.002, 0.001, 0.002, -0.15], old, np.array([1, 1, 1, 0])) is None  # not used


def test_guard_objections_name_each_rule_that_rejects_an_update():
    names = ("a", "b", "c", "d")
    old = np.tile([0.02, 0.30], (4, 1))
    cfg = CueConfig(guard_support=False, guard_view_cues=False, guard_floor=(0.03, 0.15))
    assert guard_objections(old - [0.001, 0.02], old, np.ones(4), names, cfg) == []  # better everywhere
    assert guard_objections(old, old, np.ones(4), names, cfg) == ["the cameras' keypoints and masks"]  # no gain
    one_view_pays = old - [0.0, 0.05]
    one_view_pays[1] = [0.02, 0.31]  # b's IoU falls by 0.01 > guard_view
    assert guard_objections(one_view_pays, old, np.ones(4), names, cfg) == ["the evidence of b"]
    assert guard_objections(one_view_pays, old, np.array([1, 0, 1, 1]), names, cfg) == []  # b not used
    traded = old + [0.0, -0.1]
    traded[2] = [0.04, 0.10]  # c buys IoU with keypoints: its total falls, its keypoints rise above the floor
    assert guard_objections(traded, old, np.ones(4), names, cfg) == []
    with_cues = dataclasses.replace(cfg, guard_view_cues=True, guard_floor=(0.03, 0.15))
    assert guard_objections(traded, old, np.ones(4), names, with_cues) == ["the evidence of keypoints of c"]
    below_floor = traded.copy()
    below_floor[2, 0] = 0.028  # risen by more than guard_view, but within the detector's noise floor
    assert guard_objections(below_floor, old, np.ones(4), names, with_cues) == []
    carried = old + [0.001, 0.0]
    carried[3] = [0.0, 0.1]
    support = dataclasses.replace(cfg, guard_support=True, guard_support_cues=False)
    alone = ["the cameras other than d, which alone carries it"]
    assert guard_objections(carried, old, np.ones(4), names, support) == alone
    # every view agrees better overall, but the keypoints improve in one view only (an occluded
    # view pulling the body) and get worse in the others: the keypoint gain rests on one camera
    before = np.array([[0.015, 0.35], [0.047, 0.58], [0.015, 0.31]])
    after = np.array([[0.024, 0.28], [0.040, 0.54], [0.019, 0.29]])
    cues3 = dataclasses.replace(support, guard_floor=(0.02, 0.15))
    assert guard_objections(after, before, np.ones(3), names[:3], cues3) == []
    strict = dataclasses.replace(cues3, guard_support_cues=True)
    assert guard_objections(after, before, np.ones(3), names[:3], strict) == [
        "the keypoints of the cameras other than b"
    ]


def test_a_rejected_round_hands_over_to_the_next_predictor_of_a_schedule(session, body_model):
    inputs, ev, definition, app, gt = _frame(session, 1, body_model)
    start = BodyParams(gt.pose_rotvecs[1:2], inputs.init.betas, gt.transl[1:2] + np.float32([0.03, 0.0, 0.02]))
    with torch.no_grad():
        truth = body_model(**gt.slice(1).to_torch()).vertices[0]
    bad, good = _ShiftPredictor((30.0, 20.0)), OraclePredictor(truth)
    cfg = dataclasses.replace(FAST, outer_iterations=2)
    alone = refine_frame(body_model, inputs.rig, inputs.photos, start, bad, cfg, app, None, ev, definition)
    sched = PredictorSchedule("bad,good", [bad, good])
    res = refine_frame(body_model, inputs.rig, inputs.photos, start, sched, cfg, app, None, ev, definition)
    assert alone.status == "kept"  # the wrong field alone: nothing accepted
    assert res.status == "done" and any("round 1" in n for n in res.notes)  # round 1 refused, round 2 kept
    after = BodyParams(res.pose_rotvecs[None], res.betas[None], res.transl[None])
    assert _pve(body_model, after, gt, 1) < 0.5 * _pve(body_model, start, gt, 1)


class _Overshoot(OraclePredictor):
    """Ground truth's displacements, ``factor`` times too long: the right direction, the wrong step."""

    name = "overshoot"

    def __init__(self, gt_vertices_world, factor):
        super().__init__(gt_vertices_world)
        self.factor = factor
        self.calls = 0  # rounds run

    def __call__(self, req):
        self.calls += 1
        d = super().__call__(req)
        return Displacement(d.flow * self.factor, d.confidence)


def test_a_rejected_update_is_tried_again_at_a_fraction_of_its_length(session, body_model):
    """Targets twice as far as the truth land the body as far on the other side: the whole
    update is rejected, half of it is the truth and is kept (guard_backtrack); without
    backtracking the frame keeps its start."""
    inputs, ev, definition, app, gt = _frame(session, 1, body_model)
    start = BodyParams(gt.pose_rotvecs[1:2], inputs.init.betas, gt.transl[1:2] + np.float32([0.05, 0.0, 0.0]))
    with torch.no_grad():
        truth = body_model(**gt.slice(1).to_torch()).vertices[0]
    over = _Overshoot(truth, 2.0)
    cues = CueConfig(field_check=False, w_keypoints=0, w_silhouette=0)  # the targets alone move the body
    cfg = dataclasses.replace(FAST, outer_iterations=1, cues=dataclasses.replace(cues, guard_backtrack=0))
    rigid = refine_frame(body_model, inputs.rig, inputs.photos, start, over, cfg, app, None, ev, definition)
    assert rigid.status == "kept" and any("rejected" in n for n in rigid.notes)
    cfg = dataclasses.replace(cfg, cues=dataclasses.replace(cues, guard_backtrack=2))
    res = refine_frame(body_model, inputs.rig, inputs.photos, start, over, cfg, app, None, ev, definition)
    assert res.status == "done" and any("round 1: 0.5 of the update kept" in n for n in res.notes), res.notes
    after = BodyParams(res.pose_rotvecs[None], res.betas[None], res.transl[None])
    assert _pve(body_model, after, gt, 1) < 0.3 * _pve(body_model, start, gt, 1)
    assert res.evidence_cost[1] < res.evidence_cost[0]
    with pytest.raises(ValueError, match=">= 0"):
        CueConfig(guard_backtrack=-1)


def test_rounds_end_once_a_round_barely_improves_the_agreement(session, body_model):
    """round_stop_gain: a kept round whose gain in agreement with the keypoints and masks is
    below the fraction ends the frame; 0 runs on while the guard keeps rounds."""
    inputs, ev, definition, app, gt = _frame(session, 1, body_model)
    start = BodyParams(gt.pose_rotvecs[1:2], inputs.init.betas, gt.transl[1:2] + np.float32([0.03, 0.0, 0.0]))
    with torch.no_grad():
        truth = body_model(**gt.slice(1).to_torch()).vertices[0]
    runs = {}
    for gain in (0.0, 0.99):
        oracle = _Overshoot(truth, 1.0)
        cfg = dataclasses.replace(FAST, outer_iterations=3, round_stop_mm=0.0, round_stop_gain=gain,
                                  cues=CueConfig(field_check=False))  # fmt: skip
        res = refine_frame(body_model, inputs.rig, inputs.photos, start, oracle, cfg, app, None, ev, definition)
        runs[gain] = (oracle.calls, res)
    calls, res = runs[0.99]
    assert calls == 1 and res.status == "done", res.notes
    assert any("rounds ended after round 1: it improved the agreement" in n for n in res.notes), res.notes
    assert runs[0.0][0] > 1 and not any("rounds ended" in n for n in runs[0.0][1].notes)
    with pytest.raises(ValueError, match=r"round_stop_gain in \[0, 1\)"):
        RefineConfig(round_stop_gain=1.0)


def test_evidence_has_the_detectors_left_right_swaps_undone(session, body_model):
    from mvcap.detect import FLIP_INDEX

    with Session.open(session, "a") as s:
        kp = s.read_keypoints([0])[0]
        masks = s.read_masks(0)
        swapped = kp.copy()
        swapped[2] = kp[2][FLIP_INDEX]  # the detector saw cam02 "from behind"
        s.write_detections(0, swapped, [np.round(m * 255).astype(np.uint8) for m in masks])
    with Session.open(session) as s:
        rig = s.rig
        fixed = frame_evidence(s, 0, rig)
        raw = frame_evidence(s, 0, rig, CueConfig(undo_swaps=False))
        one = frame_evidence(s, 0, rig.subset(["cam02"]))  # one camera: nothing to compare with
    for v in range(len(rig)):
        np.testing.assert_allclose(fixed[v].keypoints, kp[v], atol=1e-5)
    np.testing.assert_allclose(raw[2].keypoints, swapped[2])
    np.testing.assert_allclose(one[0].keypoints, swapped[2])
