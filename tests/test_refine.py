import dataclasses
import warnings

import numpy as np
import pytest
import torch

from mvcap.body import BodyParams
from mvcap.capture import Session
from mvcap.displace import FlowPredictor, OraclePredictor
from mvcap.fit import FitConfig
from mvcap.metrics import evaluate_body
from mvcap.refine import RefineConfig, refine_frame, refine_session

FAST = RefineConfig(predictor="oracle", outer_iterations=2, fit=FitConfig(iterations=30))


def _metrics(model, params, gt, frames):
    with torch.no_grad():
        a = model(**params.slice(frames).to_torch())
        b = model(**gt.slice(frames).to_torch())
    return evaluate_body(a.joints, b.joints, a.vertices, b.vertices)


def test_oracle_refinement_recovers_ground_truth_and_resumes(body_model, tiny_session):
    res = refine_session(tiny_session, "oracle", FAST, frames=[0], model=body_model, progress=False)
    assert res.done.tolist() == [True, False, False]
    with Session.open(tiny_session) as s:
        gt, init = s.read_ground_truth(), s.read_init()
    before, after = _metrics(body_model, init, gt, [0]), _metrics(body_model, res.params, gt, [0])
    assert before["PVE"] > 40 and after["PVE"] < 10 and after["MPJPE"] < 10
    assert np.isfinite(res.residual_px[0]).all() and res.iterations[0] > 0

    # resume: frame 0 is not recomputed, frame 1 is added
    again = refine_session(tiny_session, "oracle", FAST, frames=[0, 1], model=body_model, progress=False)
    assert again.done.tolist() == [True, True, False]
    assert again.seconds[0] == res.seconds[0]
    np.testing.assert_array_equal(again.pose_rotvecs[0], res.pose_rotvecs[0])


def test_refit_fusion_and_single_view(body_model, tiny_session):
    refit = dataclasses.replace(FAST, fusion="refit")
    res = refine_session(tiny_session, "refit", refit, frames=[0], model=body_model, progress=False)
    single = dataclasses.replace(FAST, views=("cam01",))
    one = refine_session(tiny_session, "single", single, frames=[0], model=body_model, progress=False)
    with Session.open(tiny_session) as s:
        gt, init = s.read_ground_truth(), s.read_init()
    before = _metrics(body_model, init, gt, [0])
    assert _metrics(body_model, res.params, gt, [0])["PVE"] < 0.5 * before["PVE"]
    # single view: only cam01 has a residual
    assert np.isnan(one.residual_px[0][[0, 2, 3]]).all() and np.isfinite(one.residual_px[0][1])


def test_flow_refinement_improves_on_init(body_model, tiny_session):
    cfg = dataclasses.replace(FAST, predictor="flow")
    res = refine_session(tiny_session, "flow", cfg, frames=[0], model=body_model, progress=False)
    with Session.open(tiny_session) as s:
        gt, init = s.read_ground_truth(), s.read_init()
    assert _metrics(body_model, res.params, gt, [0])["PVE"] < _metrics(body_model, init, gt, [0])["PVE"]


def test_view_without_the_person_is_skipped_with_a_warning(body_model, tiny_session):
    with Session.open(tiny_session) as s:
        rig, init, gt = s.rig, s.read_init(), s.read_ground_truth()
        photos = s.read_frame(0)
        betas = torch.as_tensor(np.array(s.subject.betas))
    # turn camera 2 around so it looks away from the person
    cams = list(rig.cameras)
    c = cams[2]
    flip = np.diag([-1.0, 1.0, -1.0])
    cams[2] = dataclasses.replace(c, R_world2cam=flip @ c.R_world2cam, t_world2cam=flip @ c.t_world2cam)
    rig = type(rig)(tuple(cams))
    with torch.no_grad():
        gt_verts = body_model(**gt.slice(0).to_torch()).vertices[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = BodyParams(init.pose_rotvecs[:1], betas, init.transl[:1])
        res = refine_frame(body_model, rig, photos, start, OraclePredictor(gt_verts), FAST)
    assert res.skipped_views == (rig.names[2],)
    assert np.isnan(res.residual_px[2]) and np.isfinite(res.residual_px[[0, 1, 3]]).all()
    assert any("skipped" in str(w.message) for w in caught)


def test_flow_predictor_is_zero_off_the_silhouette(body_model, tiny_session):
    from mvcap.displace import PredictRequest
    from mvcap.render import render

    with Session.open(tiny_session) as s:
        rig, init, photos, subject = s.rig.without_distortion(), s.read_init(), s.read_frame(0), s.subject
    with torch.no_grad():
        verts = body_model(**init.slice(0).to_torch()).vertices[0]
    frags, passes = render(
        rig,
        verts,
        body_model.faces,
        texture=torch.from_numpy(np.array(subject.texture)),
        uvs=body_model.uvs,
        uv_faces=body_model.uv_faces,
        passes=("rgb", "mask"),
    )
    out = FlowPredictor()(PredictRequest(photos, passes, frags, rig, verts, body_model.faces))
    assert out.flow.shape == (4, 128, 128, 2) and out.confidence.shape == (4, 128, 128)
    off = ~frags.mask
    assert out.flow[off].abs().max() == 0 and out.confidence[off].max() == 0
    assert 0 <= out.confidence.min() and out.confidence.max() <= 1


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="predictor"):
        RefineConfig(predictor="magic")
    with pytest.raises(ValueError, match="fusion"):
        RefineConfig(fusion="average")
    with pytest.raises(ValueError, match=r"frame_batch must be >= 1 \(1 = frames one at a time\)"):
        RefineConfig(frame_batch=0)
    with pytest.raises(ValueError, match="render_max_side must be -1"):
        RefineConfig(render_max_side=-2)
    with pytest.raises(ValueError, match=r"learned_confidence_px must be > 0 \(pixels\)"):
        RefineConfig(learned_confidence_px=0.0)
    with pytest.raises(ValueError, match=r"learned_fine_px must be >= 0 \(image pixels; 0 = off\)"):
        RefineConfig(learned_fine_px=-1.0)
    with pytest.raises(ValueError, match=r"learned_max_crop must be >= 16"):
        RefineConfig(learned_max_crop=8)


def test_auto_runs_the_subjects_adapted_network_else_flow(body_model, tiny_session):
    """predictor = "auto" (the default): learned when the subject carries an adapted network,
    flow otherwise; the run stores the one it ran, and `mvcap refine` names the run after it."""
    from importlib.resources import files

    from click.testing import CliRunner

    from mvcap.cli import main
    from mvcap.refine import resolve_predictor

    assert RefineConfig().predictor == "auto"
    with pytest.raises(ValueError, match="run alone"):
        RefineConfig(predictor="auto,flow")
    with Session.open(tiny_session) as s:
        plain = s.subject
    net = (files("mvcap") / "assets/models/displacement/lite_flowprior.pt").read_bytes()
    adapted = dataclasses.replace(plain, displacement_net=net)
    auto = RefineConfig()
    assert resolve_predictor(auto, None).predictor == "flow"
    assert resolve_predictor(auto, plain).predictor == "flow"
    assert resolve_predictor(auto, adapted).predictor == "learned"
    assert resolve_predictor(dataclasses.replace(auto, adapted=False), adapted).predictor == "flow"
    assert resolve_predictor(dataclasses.replace(auto, learned_weights="lite"), plain).predictor == "learned"
    assert resolve_predictor(dataclasses.replace(auto, predictor="flow"), adapted).predictor == "flow"

    quick = dataclasses.replace(FAST, predictor="auto", outer_iterations=1, fit=FitConfig(iterations=5))
    res = refine_session(tiny_session, "a", quick, frames=[0], model=body_model, progress=False)
    assert res.config["predictor"] == "flow"
    with Session.open(tiny_session, "a") as s:
        s.write_subject(adapted)
    res = refine_session(tiny_session, "b", quick, frames=[0], model=body_model, progress=False)
    assert res.config["predictor"] == "learned" and res.done[0]
    out = CliRunner().invoke(main, ["refine", str(tiny_session), "--frames", "1", "--set", "outer_iterations=1",
                                    "--set", "fit.iterations=5"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "run 'learned-joint'" in out.output


def test_sequence_mode_starts_from_the_previous_result(body_model, tiny_session, monkeypatch):
    import mvcap.refine as R

    seen = []
    real = R.refine_frame

    def spy(model, rig, photos, init, *args, **kwargs):
        seen.append((init.pose_rotvecs[0].copy(), args[3] if len(args) > 3 else kwargs.get("prev_pose_rotvecs")))
        return real(model, rig, photos, init, *args, **kwargs)

    monkeypatch.setattr(R, "refine_frame", spy)
    cfg = dataclasses.replace(FAST, init="previous", outer_iterations=1, fit=FitConfig(iterations=5, w_temporal=1e-3))
    first = refine_session(tiny_session, "seq", cfg, frames=[0], model=body_model, progress=False)
    refine_session(tiny_session, "seq", cfg, frames=[1], model=body_model, progress=False)  # resumed run
    with Session.open(tiny_session) as s:
        init = s.read_init()
    np.testing.assert_allclose(seen[0][0], init.pose_rotvecs[0])  # frame 0: stored init
    np.testing.assert_allclose(seen[1][0], first.pose_rotvecs[0])  # frame 1: frame 0's result
    assert seen[0][1] is None and seen[1][1] is not None  # temporal term from frame 1 on


def test_load_frame_inputs_reads_one_frame_for_the_chosen_views(tiny_session):
    from mvcap.refine import load_frame_inputs

    with Session.open(tiny_session) as s:
        inputs = load_frame_inputs(s, 1, ["cam01"])
        init, subject = s.read_init(), s.subject
        full = load_frame_inputs(s, 1)
    assert inputs.rig.names == ("cam01",) and inputs.photos.shape[0] == 1 and inputs.photos.dtype == np.uint8
    assert full.rig.names == s.rig.names and full.photos.shape[0] == len(full.rig)
    assert len(inputs.init) == 1 and inputs.has_init
    np.testing.assert_array_equal(inputs.init.pose_rotvecs[0], init.pose_rotvecs[1])
    np.testing.assert_allclose(inputs.init.betas[0], np.asarray(subject.betas, np.float32))  # the registered shape


def test_appearance_render_kwargs(body_model, tiny_session):
    from mvcap.refine import Appearance, subject_appearance

    with Session.open(tiny_session) as s:
        subject = s.subject
    app = subject_appearance(body_model, subject)
    assert app.textured and set(app.render_kwargs()) == {"texture", "uvs", "uv_faces"}
    assert not Appearance().textured and Appearance().render_kwargs() == {}


@pytest.mark.parametrize("evidence", [False, True], ids=["dense only", "with the detector's cues"])
def test_frames_refined_together_match_one_by_one(body_model, tiny_session_path, detected_session_path, tmp_path,
                                                  evidence):  # fmt: skip
    """frame_batch: each frame keeps its own rounds, guard and solver; only the fits' arithmetic
    is batched, so the results are those of frames refined one at a time, up to rounding (one
    round: a later round's flow, computed on a render of a slightly different body, amplifies
    rounding differences, as a different thread count does)."""
    import shutil

    src = detected_session_path if evidence else tiny_session_path
    cfg = dataclasses.replace(FAST, predictor="flow", outer_iterations=1, fit=FitConfig(iterations=12))
    runs = {}
    for batch in (1, 3):
        path = shutil.copy(src, tmp_path / f"b{batch}.h5")
        runs[batch] = refine_session(path, "r", dataclasses.replace(cfg, frame_batch=batch), model=body_model,
                                     progress=False)  # fmt: skip
    one, three = runs[1], runs[3]
    assert one.done.all() and three.done.all()
    np.testing.assert_array_equal(one.iterations, three.iterations)
    np.testing.assert_allclose(three.pose_rotvecs, one.pose_rotvecs, atol=1e-4)
    np.testing.assert_allclose(three.transl, one.transl, atol=1e-4)  # 0.1 mm


def test_a_failing_frame_does_not_stop_the_frames_refined_with_it(body_model, tiny_session):
    from mvcap.refine import FrameInput, estimate_appearance, load_frame_inputs, make_predictor, refine_frames

    cfg = dataclasses.replace(FAST, predictor="flow", outer_iterations=1, fit=FitConfig(iterations=5))
    with Session.open(tiny_session) as s:
        inputs = [load_frame_inputs(s, t) for t in range(3)]
        appearance = estimate_appearance(body_model, s.subject)
    frames = [FrameInput(x.photos, x.init) for x in inputs]
    two = inputs[1].init
    frames[1] = FrameInput(
        inputs[1].photos, BodyParams(*(np.concatenate([x, x]) for x in (two.pose_rotvecs, two.betas, two.transl)))
    )
    out = refine_frames(body_model, inputs[0].rig, frames, make_predictor("flow", cfg), cfg, appearance)
    assert isinstance(out[1], ValueError) and "one frame" in str(out[1])
    assert out[0].status == "done" and out[2].status == "done"


def test_view_windows_hold_the_body_and_map_back_to_the_image(body_model, tiny_session):
    from mvcap.cameras import project
    from mvcap.refine import load_frame_inputs, view_windows

    with Session.open(tiny_session) as s:
        inputs = load_frame_inputs(s, 0)
    rig = inputs.rig.without_distortion()
    with torch.no_grad():
        vertices = body_model(**inputs.init.to_torch()).vertices[0]
    uv = project(rig, vertices.double(), distort=False)
    for max_side in (0, 40):
        win = view_windows(rig, vertices, max_side)
        x0, y0, w, h = (torch.as_tensor(win.boxes[:, i], dtype=torch.float64)[:, None] for i in range(4))
        inside = (uv[..., 0] >= x0) & (uv[..., 0] < x0 + w) & (uv[..., 1] >= y0) & (uv[..., 1] < y0 + h)
        in_image = (uv[..., 0] >= 0) & (uv[..., 0] < rig[0].width) & (uv[..., 1] >= 0) & (uv[..., 1] < rig[0].height)
        assert inside[in_image].all()  # every vertex the image shows is in its window
        assert (win.boxes[:, :2] >= 0).all() and (win.boxes[:, 0] + win.boxes[:, 2] <= rig[0].width).all()
        assert len({tuple(x) for x in win.sizes}) == 1  # one render size: the views render together
        if max_side:
            assert win.sizes.max() <= max_side
        back = win.to_image(project(win.rig(rig), vertices.double(), distort=False))
        torch.testing.assert_close(back, uv)
    photos = inputs.photos
    crop = view_windows(rig, vertices).crop(photos)  # native resolution: the photo's own pixels
    x0, y0, w, h = view_windows(rig, vertices).boxes[0]
    np.testing.assert_array_equal(crop[0, :h, :w], photos[0, y0 : y0 + h, x0 : x0 + w])


def test_windowed_rendering_refines_like_the_whole_image(body_model, tiny_session):
    with Session.open(tiny_session) as s:
        gt, init = s.read_ground_truth(), s.read_init()
    pve = {}
    for window in (True, False):
        cfg = dataclasses.replace(FAST, render_window=window)
        res = refine_session(tiny_session, f"w{window}", cfg, frames=[0], model=body_model, progress=False)
        pve[window] = _metrics(body_model, res.params, gt, [0])["PVE"]
    assert pve[True] < 10 and abs(pve[True] - pve[False]) < 1.0
    assert _metrics(body_model, init, gt, [0])["PVE"] > 40


def test_an_error_in_a_batch_raises_after_the_frames_before_it_are_written(body_model, tiny_session, monkeypatch):
    import mvcap.refine as R

    calls, real = [], R.view_windows

    def second_call_fails(*args, **kwargs):  # frames run in lockstep: call 2 is frame 1's first round
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a broken camera driver")
        return real(*args, **kwargs)

    monkeypatch.setattr(R, "view_windows", second_call_fails)
    cfg = dataclasses.replace(FAST, predictor="flow", outer_iterations=1, fit=FitConfig(iterations=5), frame_batch=3)
    with pytest.raises(R.RefineError, match="frame 1: refinement failed: RuntimeError: a broken camera driver"):
        refine_session(tiny_session, "b", cfg, model=body_model, progress=False)
    with Session.open(tiny_session) as s:
        assert s.read_results("b").done.tolist() == [True, False, False]


class _Counted(OraclePredictor):
    """The oracle, counting the rounds that call it."""

    def __init__(self, gt_vertices_world):
        super().__init__(gt_vertices_world)
        self.calls = 0

    def __call__(self, req):
        self.calls += 1
        return super().__call__(req)


def test_rounds_end_once_the_body_settles(body_model, tiny_session):
    """round_stop_mm: the oracle lands the body in the first rounds; the rounds after move it
    less than the threshold, and the frame ends there instead of running all of them."""
    from mvcap.refine import estimate_appearance, load_frame_inputs

    with Session.open(tiny_session) as s:
        inputs = load_frame_inputs(s, 0)
        appearance = estimate_appearance(body_model, s.subject)
        gt = s.read_ground_truth()
    with torch.no_grad():
        truth = body_model(**gt.slice([0]).to_torch()).vertices[0]
    results, calls = {}, {}
    for stop in (0.0, 5.0, 1e6):
        cfg = dataclasses.replace(FAST, outer_iterations=5, round_stop_mm=stop)
        oracle = _Counted(truth)
        results[stop] = refine_frame(body_model, inputs.rig, inputs.photos, inputs.init, oracle, cfg, appearance)
        calls[stop] = oracle.calls
    assert calls[0.0] == 5 and not any("rounds ended" in n for n in results[0.0].notes)
    assert calls[1e6] == 1 and "rounds ended after round 1" in results[1e6].notes[-1]
    assert 1 < calls[5.0] < 5 and any(f"rounds ended after round {calls[5.0]}" in n for n in results[5.0].notes)
    assert [results[k].rounds for k in (0.0, 5.0, 1e6)] == [calls[k] for k in (0.0, 5.0, 1e6)]
    pve = {}
    for stop, res in results.items():
        after = BodyParams(res.pose_rotvecs[None], res.betas[None], res.transl[None])
        pve[stop] = _metrics(body_model, after, gt.slice([0]), [0])["PVE"]
    assert pve[5.0] < 10 and abs(pve[5.0] - pve[0.0]) < 2.0, pve  # the rounds it skipped barely moved it
    assert pve[1e6] > pve[0.0]  # one round is not enough: the test would pass without rounds
    with pytest.raises(ValueError, match=r"round_stop_mm must be >= 0"):
        RefineConfig(round_stop_mm=-1.0)
    from mvcap.pipeline import refine_events

    assert refine_events({"rounds": [3, 5, 4]}) == "4.0 render-predict-fit rounds per frame (3-5)"
