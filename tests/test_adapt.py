"""Self-training adaptation of the displacement network (mvcap.adapt) on the tiny synthetic capture."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mvcap.adapt import (
    AdaptConfig,
    AdaptError,
    _epe,
    adapt_network,
    adapt_subject,
    adaptation_samples,
    background_plates,
    composite_samples,
)
from mvcap.capture import Session
from mvcap.nets.predictor import LearnedPredictor

LITE = LearnedPredictor.load("lite", device="cpu").cfg  # the plain shipped network's input contract


@pytest.fixture
def truth_session(detected_session_path, tmp_path, write_gt_run):
    """The tiny session with detections and a results run "truth" = ground truth."""
    path = tmp_path / "tiny.h5"
    shutil.copy(detected_session_path, path)
    write_gt_run(path, [0, 1, 2], name="truth")
    return path


def _samples(path, body_model, **kw):
    cfg = AdaptConfig(**{"source": "truth", "perturbations": 1, **kw})
    with Session.open(path) as s:
        return adaptation_samples(s, s.subject, [0, 1, 2], cfg, LITE, body_model)


def test_samples_point_back_to_the_estimate(truth_session, body_model):
    d = _samples(truth_session, body_model, error_scale=(0.0, 0.0), mask_to_person=False)
    n = len(d["photo"])
    assert n >= 9 and d["render"].shape[1:] == (LITE.render_in_channels, 96, 96)
    assert d["target"].shape == (n, 2, 96, 96) and d["mask"].shape == (n, 1, 96, 96)
    m = d["mask"][:, 0] > 0
    px = d["target"].norm(dim=1) * d["px"][:, None, None]
    assert float(px[m].max()) < 0.05  # rendered at the estimate itself: nothing to move
    moved = _samples(truth_session, body_model, error_scale=(0.5, 0.5), mask_to_person=False)
    m = moved["mask"][:, 0] > 0
    far = moved["target"].norm(dim=1) * moved["px"][:, None, None]
    assert float(far[m].mean()) > 1.0
    # the estimate is the truth here, so nearly every target lies on the detector's person mask
    kept = _samples(truth_session, body_model, error_scale=(0.5, 0.5))
    assert 0.8 < float(kept["mask"].sum() / moved["mask"].sum()) <= 1.0


def test_a_flow_prior_network_adapts_on_the_correction_to_flow(truth_session, body_model):
    """A flow-prior network's samples carry refinement's flow on the same render, and their
    target is the displacement back to the estimate minus that flow."""
    import dataclasses

    cfg = AdaptConfig(source="truth", perturbations=1, error_scale=(0.5, 0.5), mask_to_person=False)
    fp = dataclasses.replace(LITE, flow_prior=True)
    with Session.open(truth_session) as s:
        plain = adaptation_samples(s, s.subject, [0, 1, 2], cfg, LITE, body_model)
        prior = adaptation_samples(s, s.subject, [0, 1, 2], cfg, fp, body_model)
    C, S = LITE.render_in_channels, LITE.crop_size
    assert prior["render"].shape[1] == C + 3 and torch.equal(prior["render"][:, :C], plain["render"])
    flow = prior["render"][:, C : C + 2] / S
    assert flow.abs().max() > 0
    torch.testing.assert_close(prior["target"] + flow, plain["target"], atol=1e-6, rtol=0)


def test_tiles_at_the_fine_pass_resolution_point_back_too(truth_session, body_model):
    plain = _samples(truth_session, body_model, error_scale=(0.5, 0.5), mask_to_person=False)
    both = _samples(truth_session, body_model, error_scale=(0.5, 0.5), mask_to_person=False, fine_px=0.5)
    # every view's crop, as before, then a tile where the fine pass would run (a window of
    # more than 96 request pixels: its crop size, a multiple of 16 up to the request's own
    # pixels, is larger than the training size); the tile is an S-crop of part of the window
    is_tile, k = [], 0
    for photo in both["photo"]:
        same = k < len(plain["photo"]) and torch.equal(photo, plain["photo"][k])
        is_tile.append(not same)
        k += same
    is_tile = torch.tensor(is_tile)
    assert k == len(plain["photo"]) and 0 < int(is_tile.sum()) and not is_tile[0]
    whole, tile = both["window"][is_tile.roll(-1)], both["window"][is_tile]
    assert bool((whole > 96).all())
    assert int((plain["window"] > 96).sum()) == len(tile)
    assert torch.allclose(tile, torch.round(whole * 96 / (torch.ceil(whole / 16) * 16))) and bool((tile < whole).all())
    m = both["mask"][is_tile, 0] > 0
    assert float(m.float().mean()) > 0.5 * float((plain["mask"] > 0).float().mean())  # on the body
    assert float((both["target"][is_tile].norm(dim=1) * both["px"][is_tile, None, None])[m].mean()) > 1.0
    still = _samples(truth_session, body_model, error_scale=(0.0, 0.0), mask_to_person=False, fine_px=0.5)
    m = still["mask"][is_tile, 0] > 0
    assert float((still["target"][is_tile].norm(dim=1) * still["px"][is_tile, None, None])[m].max()) < 0.05
    with pytest.raises(ValueError, match=r"fine_px must be >= 0 \(0: no tiles\)"):
        AdaptConfig(fine_px=-1.0)


def test_background_plates_remove_the_person(tmp_path, tiny_session_path):
    """A noisy background with a "person" that walks slowly across (and one that stands
    still in view 1): the plate is the background, the noise is measured, the standing
    person's pixels are a hole filled from around it."""
    import cv2

    with Session.open(tiny_session_path) as s:
        rig = s.rig.without_distortion()
    rng = np.random.default_rng(0)
    V, (W, H), T, sigma = len(rig), rig[0].image_size, 7, 2.0
    background = cv2.resize(rng.uniform(40, 215, (V * 8, 8, 3)), (W, V * H), interpolation=cv2.INTER_CUBIC)
    background = background.reshape(V, H, W, 3)
    with Session.create(tmp_path / "walk.h5", rig, T) as s:
        for t in range(T):
            photos = background + rng.normal(0, sigma, background.shape)
            masks = np.zeros((V, H, W), bool)
            masks[:, 40:90, 8 + 10 * t : 48 + 10 * t] = True  # slow: most of its pixels are covered in most frames
            masks[1, 10:30, 60:80] = True  # stands still
            photos[masks] = (255, 0, 255)
            s.write_frame(t, np.clip(np.rint(photos), 0, 255).astype(np.uint8))
            s.write_detections(t, np.zeros((V, 33, 3), np.float32), masks)
        plates = background_plates(s, grow_px=2)
    free = np.ones((V, H, W), bool)
    free[1, 8:32, 58:82] = False
    err = np.abs(plates.images.astype(np.float64) - background)
    assert err[free].mean() < 1.5 and np.quantile(err[free], 0.999) < 10
    assert np.allclose(plates.noise_std, sigma, atol=0.6), plates.noise_std
    assert plates.holes[1] > 0 and plates.holes[[0, 2, 3]].max() == 0
    filled = plates.images[1, 12:28, 62:78].astype(np.float64)
    assert np.abs(filled - background[1, 12:28, 62:78]).mean() < 30  # like its surroundings, not magenta


def test_composites_have_exact_targets(truth_session, body_model):
    with Session.open(truth_session) as s:
        plates = background_plates(s)
        cfg = AdaptConfig(source="truth", perturbations=1, pose_spread=0.3, error_scale=(0.0, 0.0))
        still = composite_samples(s, s.subject, [0, 1], cfg, LITE, plates, body_model)
        moved = composite_samples(
            s, s.subject, [0, 1], dataclasses.replace(cfg, error_scale=(0.5, 0.5)), LITE, plates, body_model
        )
        worn = composite_samples(
            s, s.subject, [0, 1], dataclasses.replace(cfg, loose_prob=1.0, jpeg_prob=1.0), LITE, plates, body_model
        )
    assert set(still) == {"photo", "render", "mask", "target", "px", "frame", "window"} and len(still["photo"]) >= 6
    m = still["mask"][:, 0] > 0
    assert float((still["target"].norm(dim=1) * still["px"][:, None, None])[m].max()) < 0.05
    m = moved["mask"][:, 0] > 0
    assert float((moved["target"].norm(dim=1) * moved["px"][:, None, None])[m].mean()) > 1.0
    # the photo shows the subject where the estimate (here: the truth) is rendered
    on = still["mask"][:, 0] > 0
    diff = lambda render: float((still["photo"] - render[:, :3]).abs().mean(1)[on].mean())  # noqa: E731
    assert diff(still["render"]) < 0.5 * diff(still["render"].roll(1, 0))
    # hair, loose clothing and compression change the photo only: the estimate and its targets stay
    assert all(torch.equal(worn[k], still[k]) for k in ("render", "mask", "target", "px"))
    assert float((worn["photo"] - still["photo"]).abs().mean()) > 0.005
    with pytest.raises(ValueError, match="loose_prob"):
        AdaptConfig(loose_prob=1.5)


def test_both_routes_train_on_both(truth_session):
    cfg = AdaptConfig(source="truth", route="self", perturbations=1, val_every=0, steps=1, plate_frames=3)
    assert AdaptConfig().route == "both"  # the default
    _, self_only = adapt_network(truth_session, cfg, frames=[0, 1], progress=False)
    _, comp = adapt_network(truth_session, dataclasses.replace(cfg, route="composite"), frames=[0, 1], progress=False)
    _, both = adapt_network(truth_session, dataclasses.replace(cfg, route="both"), frames=[0, 1], progress=False)
    assert both.train_samples == self_only.train_samples + comp.train_samples and comp.train_samples >= 6
    assert both.composite_samples == comp.composite_samples == comp.train_samples and not self_only.composite_samples
    assert f"{comp.train_samples} of them composites" in both.describe()


def test_adaptation_brings_the_network_to_the_estimate(truth_session, body_model):
    # adapt.toml's learning rate: from a network as good as the shipped one 1e-3 overshoots
    cfg = AdaptConfig(
        source="truth", route="self", perturbations=1, error_scale=(0.3, 0.6), val_every=0, steps=30, batch_size=4,
    )  # fmt: skip
    with Session.open(truth_session) as s:
        data = adaptation_samples(s, s.subject, [0, 1, 2], cfg, LITE, body_model)
    before, zero = _epe(LearnedPredictor.load("lite", device="cpu").net, data)
    net, res = adapt_network(truth_session, cfg, weights="lite", frames=[0, 1, 2], progress=False)
    after, _ = _epe(net, data)
    assert res.train_frames == (0, 1, 2) and res.train_samples == len(data["photo"]) and res.steps == 30
    assert after < 0.9 * before and after < zero, (before, after, zero)


def test_adapt_subject_stores_the_network_that_refine_then_uses(truth_session):
    from mvcap.refine import RefineConfig, make_predictor

    with Session.open(truth_session) as s:
        subject = s.subject
    cfg = AdaptConfig(source="truth", perturbations=1, val_every=0, steps=2)
    adapted, _ = adapt_subject(subject, truth_session, cfg, frames=[0], progress=False)
    assert adapted.displacement_net and adapted.meta["adapted"]["frames"] == [0]
    assert adapted.meta["adapted"]["config"]["steps"] == 2 and adapted.betas.tolist() == subject.betas.tolist()
    learned = make_predictor("learned", RefineConfig(predictor="learned"), subject=adapted)
    assert learned.source == "the subject's adapted network"
    shipped = make_predictor("learned", RefineConfig(predictor="learned", adapted=False), subject=adapted)
    assert shipped.source.endswith("lite_flowprior.pt")  # the default network
    assert not torch.equal(next(learned.net.parameters()), next(shipped.net.parameters()))
    sched = make_predictor("learned,flow", RefineConfig(predictor="learned,flow"), subject=adapted)
    assert sched.predictors[0].source == "the subject's adapted network"


def test_adapting_with_confidence_stores_a_network_that_weights_its_targets(truth_session, body_model):
    from mvcap.refine import RefineConfig, estimate_request, load_frame_inputs, make_predictor

    with Session.open(truth_session) as s:
        subject = s.subject
        inputs = load_frame_inputs(s, 1)
    cfg = AdaptConfig(source="truth", perturbations=1, val_every=0, steps=2, confidence=True)
    # the plain network: a flow-prior one's weights are also the flow's (zero where it fails)
    adapted, _ = adapt_subject(subject, truth_session, cfg, weights="lite", frames=[0], progress=False)
    learned = make_predictor("learned", RefineConfig(predictor="learned"), subject=adapted)
    assert learned.cfg.confidence and adapted.meta["adapted"]["config"]["confidence"]
    with torch.no_grad():
        v = body_model(**inputs.init.to_torch(dtype=torch.float32)).vertices[0]
    req = estimate_request(body_model, inputs.rig.without_distortion(), inputs.photos, v)
    learned.confidence_px = 0.05  # below the expected errors at this tiny image size: weights vary
    out = learned(req)
    mask = req.fragments.mask
    assert torch.all(out.confidence[~mask] == 0) and float(out.confidence[mask].min()) > 0
    assert float(out.confidence[mask].max()) <= 1.0 and float(out.confidence[mask].std()) > 0


def test_at_most_max_frames_spread_over_the_chosen(truth_session):
    cfg = AdaptConfig(source="truth", max_frames=2, perturbations=1, val_every=0, steps=1)
    _, res = adapt_network(truth_session, cfg, frames=[0, 1, 2], progress=False)
    assert res.train_frames == (0, 2) and res.steps == 1
    assert "labelled by run 'truth'" in res.describe()


def test_flow_labels_refine_the_chosen_frames_first(truth_session, body_model):
    """source = "flow": the frames adaptation uses are refined by flow first, with the cues,
    and that result is the label; a second call resumes the run, other settings redo it."""
    import h5py

    from mvcap.adapt import FLOW_LABEL_RUN, flow_labels
    from mvcap.metrics import mpjpe
    from mvcap.refine import RefineConfig

    quick = RefineConfig(outer_iterations=2, frame_batch=1)
    cfg = AdaptConfig(source="flow", max_frames=2, perturbations=1, val_every=0, steps=1)
    with Session.open(truth_session) as s:
        subject = s.subject
    with pytest.raises(AdaptError, match="holds subject .* not 'someone'.*`mvcap refine --subject FILE`"):
        adapt_network(truth_session, cfg, dataclasses.replace(subject, name="someone"), progress=False)
    with h5py.File(truth_session, "a") as f:  # a capture the subject was never stored in: adapt stores it
        del f["subject"]
    _, res = adapt_network(truth_session, cfg, subject, frames=[0, 1, 2], progress=False, label_refine=quick)
    assert res.train_frames == (0, 2) and res.source == "flow"
    assert f"labelled by flow's refinement (run {FLOW_LABEL_RUN!r})" in res.describe()
    with Session.open(truth_session) as s:
        label, init, gt = s.read_results(FLOW_LABEL_RUN), s.read_init(), s.read_ground_truth()
    assert label.done.tolist() == [True, False, True] and label.config["predictor"] == "flow"
    with Session.open(truth_session) as s:
        assert s.subject == subject
    joints = lambda p: body_model(**p.slice([0, 2]).to_torch()).joints  # noqa: E731
    err = lambda p: float(mpjpe(joints(p), joints(gt)).mean())  # noqa: E731
    assert err(label.params) < err(init)  # the label is closer to the person than the init
    assert flow_labels(truth_session, [0, 2], quick, progress=False) == 2  # resumed: nothing redone
    with Session.open(truth_session) as s:
        assert np.array_equal(s.read_results(FLOW_LABEL_RUN).seconds, label.seconds, equal_nan=True)
    other = dataclasses.replace(quick, outer_iterations=1)
    assert flow_labels(truth_session, [0], other, progress=False) == 1  # other settings: started over
    with Session.open(truth_session) as s:
        assert s.read_results(FLOW_LABEL_RUN).done.tolist() == [True, False, False]


def test_the_label_run_is_not_the_sessions_run(truth_session, write_gt_run):
    """Commands that default to the session's only run pass over adapt's label run."""
    from mvcap.adapt import FLOW_LABEL_RUN
    from mvcap.cli import _pick_run

    write_gt_run(truth_session, [0], name=FLOW_LABEL_RUN)
    assert _pick_run(truth_session, None) == "truth"
    with Session.open(truth_session, "a") as s:
        s.delete_results("truth")
    assert _pick_run(truth_session, None) == FLOW_LABEL_RUN  # alone, it is the run


def test_a_damaged_adapted_network_is_named():
    from mvcap.nets.predictor import WeightsError

    with pytest.raises(WeightsError, match="the subject's adapted network .*adapt it again with `mvcap adapt`"):
        LearnedPredictor.load(b"not a weights file")


def test_adapt_errors(truth_session, tmp_path):
    with pytest.raises(AdaptError, match="no results run 'nope'"):
        adapt_network(truth_session, AdaptConfig(source="nope"), progress=False)
    with pytest.raises(AdaptError, match=r"frames \[5\] are outside .* frames 0..2"):
        adapt_network(truth_session, AdaptConfig(source="truth"), frames=[1, 5], progress=False)
    with Session.open(truth_session, "a") as s:
        s.results_run("empty", config={})
    with pytest.raises(AdaptError, match="none of the 3 chosen frames"):
        adapt_network(truth_session, AdaptConfig(source="empty"), progress=False)
    for kw, msg in [
        ({"error_scale": (0.5, 0.1)}, "error_scale"),
        ({"val_every": 1}, "val_every"),
        ({"perturbations": 0}, "perturbations"),
        ({"max_frames": 0}, "max_frames"),
        ({"lr": 0.0}, "lr"),
        ({"route": "paste"}, "route must be one of"),
        ({"pose_spread": -1.0}, "pose_spread"),
    ]:
        with pytest.raises(ValueError, match=msg):
            AdaptConfig(**kw)


def test_adapt_command(truth_session, tmp_path):
    from mvcap.cli import main
    from mvcap.subject import Subject

    with Session.open(truth_session) as s:
        subject_file = s.subject.save(tmp_path / "who.npz")
    args = ["adapt", str(subject_file), "--session", str(truth_session), "--frames", "0:2", "--write-session"]
    out = CliRunner().invoke(main, [*args, "--set", "steps=2", "--set", "perturbations=1", "--set", "source=truth"])
    assert out.exit_code == 0, out.output
    assert "adapted on 2 frames" in out.output and "written into the session" in out.output
    saved = Subject.load(subject_file)
    with Session.open(truth_session) as s:
        assert saved.displacement_net and s.subject == saved
    bad = CliRunner().invoke(main, ["adapt", str(subject_file), "--session", str(truth_session), "--set", "source=x"])
    assert bad.exit_code != 0 and "no results run 'x'" in bad.output
    nope = CliRunner().invoke(main, [*args, "--weights", "lite_nope"])
    assert nope.exit_code != 0 and "lite, lite_flowprior" in nope.output


def test_run_adapts_once_and_keeps_it(truth_session, tmp_path):
    """`mvcap run` with [adapt] enabled: adapts after the subject stage, keeps the adapted
    copy on the next run, adapts again for other frames, and takes a file's own network."""
    from mvcap.pipeline import load_run_config, prepare_run
    from mvcap.subject import Subject

    with Session.open(truth_session) as s:
        subject_file = s.subject.save(tmp_path / "who.npz")
    body = (
        f'frames = "0:2"\n[capture]\nsession = "{truth_session}"\n[init]\nsource = "session"\n'
        f'[subject]\nfile = "{subject_file}"\n[adapt]\nenabled = true\n'
        '[adapt.config]\nsource = "truth"\nperturbations = 1\nval_every = 0\nsteps = 2\n'
    )
    (tmp_path / "run.toml").write_text(body)

    def prepare(text=body):
        (tmp_path / "run.toml").write_text(text)
        cfg, base = load_run_config(tmp_path / "run.toml")
        return prepare_run(cfg, base, progress=False).summary.stage_notes.get("adapt", "")

    def stored():
        with Session.open(truth_session) as s:
            return s.subject.displacement_net

    assert prepare().startswith("adapted on 2 frames")
    net = stored()
    assert net and prepare().startswith("network already adapted") and stored() == net
    assert prepare(body.replace('frames = "0:2"', 'frames = "0:1"')).startswith("adapted on 1 frames")
    assert stored() != net
    # a subject file that carries its own adapted network replaces the session's copy
    own = dataclasses.replace(Subject.load(subject_file), displacement_net=net, meta={"adapted": {"mine": 1}})
    own.save(subject_file)
    prepare(body.replace("enabled = true", "enabled = false"))
    assert stored() == net
