import json

import numpy as np
import pytest
import torch

from mvcap.bench import BenchConfig, format_table, parse_method, run_benchmark
from mvcap.capture import Session
from mvcap.refine import RefineConfig


def test_parse_method():
    kind, cfg = parse_method("dense-flow-refit@cam2", RefineConfig())
    assert kind == "dense" and (cfg.predictor, cfg.fusion, cfg.views) == ("flow", "refit", ("cam2",))
    assert parse_method("init", RefineConfig()) == ("init", None)
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("dense-magic", RefineConfig())
    with pytest.raises(ValueError, match="@view"):
        parse_method("gt@cam1", RefineConfig())
    kind, cfg = parse_method("dense-learned:flow-joint", RefineConfig())  # a per-round schedule
    assert kind == "dense" and cfg.predictor == "learned,flow"
    with pytest.raises(ValueError, match="schedule"):
        parse_method("dense-learned:magic-joint", RefineConfig())
    with pytest.raises(ValueError, match="oracle and auto predictors run alone"):
        RefineConfig(predictor="oracle,flow")


def test_gt_row_reads_zero_and_init_does_not(body_model, tiny_session, tmp_path):
    report = run_benchmark(
        [tiny_session],
        BenchConfig(methods=("init", "gt", "sparse-gt-keypoints")),
        model=body_model,
        progress=False,
        log=lambda m: None,
    )
    rows = report["methods"]
    for key in ("MPJPE", "PA-MPJPE", "N-MPJPE", "PVE", "PA-PVE", "N-PVE"):
        assert rows["gt"][key] < 1e-3
        assert rows["init"][key] > 10
    assert rows["sparse-gt-keypoints"]["MPJPE"] < rows["init"]["MPJPE"]
    table = format_table(report)
    assert table.splitlines()[0].startswith("| method | MPJPE") and "| gt | 0.0 |" in table
    json.dumps(report, default=str)

    # a tagged run is stored beside the plain one instead of resuming or overwriting it
    tagged = run_benchmark(
        [tiny_session],
        BenchConfig(methods=("sparse-gt-keypoints",), keypoint_noise_px=25.0, tag="noisy"),
        model=body_model,
        progress=False,
        log=lambda m: None,
    )["methods"]
    assert list(tagged) == ["sparse-gt-keypoints#noisy"]
    assert tagged["sparse-gt-keypoints#noisy"]["MPJPE"] != rows["sparse-gt-keypoints"]["MPJPE"]
    with Session.open(tiny_session) as s:
        assert {"sparse-gt-keypoints", "sparse-gt-keypoints#noisy"} <= set(s.result_names())
    with pytest.raises(ValueError, match="tag"):
        BenchConfig(tag="a/b")


def test_appearance_ablation_methods(body_model):
    from mvcap.bench import method_appearance, parse_method
    from mvcap.refine import RefineConfig, estimate_appearance
    from mvcap.synth import make_subject

    kind, cfg = parse_method("dense-learned-joint+wrongtexture@cam01", RefineConfig())
    assert kind == "dense" and cfg.appearance == "wrong" and cfg.views == ("cam01",) and cfg.predictor == "learned"
    assert parse_method("dense-flow-refit+notexture", RefineConfig())[1].appearance == "none"
    with pytest.raises(ValueError, match="unknown method suffix"):
        parse_method("dense-flow-joint+sepia", RefineConfig())

    subject = make_subject(np.random.default_rng(0), body_model, "s")
    own = estimate_appearance(body_model, subject, "subject").texture
    wrong = method_appearance(body_model, subject, "wrong").texture  # the benchmark supplies the wrong texture
    assert own.shape == wrong.shape and (own != wrong).any()
    assert not estimate_appearance(body_model, subject, "none").textured
    assert estimate_appearance(body_model, subject, "none").render_kwargs() == {}
    with pytest.raises(ValueError, match="benchmark supplies"):
        estimate_appearance(body_model, subject, "wrong")  # the refine loop does not build it

    # the paper's robustness rows: per-texel noise, a brightness shift; seeded, so repeatable
    assert parse_method("dense-learned-joint+noise30", RefineConfig())[1].appearance == "noise30"
    assert parse_method("dense-learned-joint+brightness25", RefineConfig())[1].appearance == "brightness25"
    with pytest.raises(ValueError, match="appearance must be one of"):
        RefineConfig(appearance="noise")
    own_f = own.numpy().astype(np.float32)
    for mode, lo, hi in (("noise10", 6, 10), ("noise30", 17, 30)):
        tex = estimate_appearance(body_model, subject, mode).texture
        assert torch.equal(tex, estimate_appearance(body_model, subject, mode).texture)
        d = tex.numpy().astype(np.float32) - own_f
        assert lo < d.std() < hi  # clipping at 0 and 255 shrinks it a little
    d = estimate_appearance(body_model, subject, "brightness50").texture.numpy().astype(np.float32) - own_f
    inside = (own_f > 60) & (own_f < 195)  # away from clipping: one shift everywhere
    assert np.ptp(d[inside]) <= 1 and abs(d[inside].mean()) > 0


def test_view_subsets_in_method_names():
    kind, cfg = parse_method("dense-learned-joint@cam00+cam01+cam02", RefineConfig())
    assert kind == "dense" and cfg.views == ("cam00", "cam01", "cam02") and cfg.predictor == "learned"
    assert parse_method("sparse-detector-keypoints@cam01+cam03", RefineConfig())[1].views == ("cam01", "cam03")
    # without '@' the config's refine.views applies (it used to be discarded)
    base = RefineConfig(views=("cam00", "cam02"))
    assert parse_method("dense-flow-refit", base)[1].views == ("cam00", "cam02")
    assert parse_method("sparse-gt-keypoints", base)[1].views == ("cam00", "cam02")
    assert parse_method("dense-flow-refit@cam01", base)[1].views == ("cam01",)  # the name wins
    with pytest.raises(ValueError, match="joined by"):
        parse_method("dense-flow-joint@cam00+", RefineConfig())
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("sparse-magic-keypoints", RefineConfig())


def test_detector_keypoints_and_view_subsets(body_model, tiny_keypoint_session_path, tiny_session, tmp_path):
    """sparse-detector-keypoints fits the stored detections; '@a+b' fits only those views;
    the table and the JSON carry PA-PVE."""
    import shutil

    path = tmp_path / "kp.h5"
    shutil.copy(tiny_keypoint_session_path, path)
    methods = ("init", "sparse-detector-keypoints", "sparse-gt-keypoints@cam00+cam01+cam02")
    report = run_benchmark([path], BenchConfig(methods=methods), model=body_model, progress=False, log=lambda m: None)
    rows = report["methods"]
    assert list(rows) == list(methods)
    det = rows["sparse-detector-keypoints"]
    # detector-like targets: finite and keypoint-like, worse than 2 px ground-truth joints would be
    assert np.isfinite(det["MPJPE"]) and det["MPJPE"] < 100 and det["PA-PVE"] > 1.0
    with Session.open(path) as s:
        sub = s.read_results("sparse-gt-keypoints@cam00+cam01+cam02")
        assert s.read_results("sparse-detector-keypoints").params.pose_rotvecs.shape == (3, 24, 3)
    assert np.isnan(sub.residual_px[:, 3]).all() and np.isfinite(sub.residual_px[:, :3]).all()
    table = format_table(report)
    header = table.splitlines()[0]
    assert "| PA-PVE |" in header and "| PA-MPJPE |" in header
    row = next(line for line in table.splitlines() if line.startswith("| sparse-detector-keypoints |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[cols.index("PA-PVE")]) == pytest.approx(det["PA-PVE"], abs=0.05)
    assert "PA-PVE" in json.loads(json.dumps(report, default=str))["methods"]["init"]

    # a session without detections: a clear error, not a crash deep inside
    with pytest.raises(ValueError, match="needs mediapipe_pose_33 detections"):
        run_benchmark(
            [tiny_session],
            BenchConfig(methods=("sparse-detector-keypoints",)),
            model=body_model,
            progress=False,
            log=lambda m: None,
        )


def test_a_frame_refinement_gave_up_on_scores_as_its_init():
    from mvcap.bench import _fill_from_init
    from mvcap.body import BodyParams

    nan = np.full((3, 24, 3), np.nan, np.float32)
    res = BodyParams(nan.copy(), np.full((3, 10), np.nan, np.float32), np.full((3, 3), np.nan, np.float32))
    res.pose_rotvecs[0], res.betas[0], res.transl[0] = 0.1, 0.5, 1.0
    init = BodyParams(np.zeros((3, 24, 3), np.float32), np.zeros((3, 10), np.float32), np.ones((3, 3), np.float32) * 2)
    out = _fill_from_init(res, init, [1])
    assert (out.pose_rotvecs[1] == 0).all() and (out.transl[1] == 2).all()
    assert (out.betas[1] == 0.5).all()  # the run's (subject's) shape, not the init's
    assert (out.pose_rotvecs[0] == 0.1).all() and np.isnan(out.pose_rotvecs[2]).all()
