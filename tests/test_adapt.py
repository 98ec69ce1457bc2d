"""Self-training adaptation of the displacement network (mvcap.adapt) on the tiny synthetic capture."""

import dataclasses
import shutil

import pytest
import torch
from click.testing import CliRunner

from mvcap.adapt import AdaptConfig, AdaptError, _epe, adapt_network, adapt_subject, adaptation_samples
from mvcap.capture import Session
from mvcap.nets.predictor import LearnedPredictor

LITE = LearnedPredictor.load(device="cpu").cfg  # the shipped network's input contract


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


def test_adaptation_brings_the_network_to_the_estimate(truth_session, body_model):
    cfg = AdaptConfig(
        source="truth", perturbations=1, error_scale=(0.3, 0.6), val_every=0, steps=15, batch_size=4, lr=1e-3
    )
    with Session.open(truth_session) as s:
        data = adaptation_samples(s, s.subject, [0, 1, 2], cfg, LITE, body_model)
    before, zero = _epe(LearnedPredictor.load(device="cpu").net, data)
    net, res = adapt_network(truth_session, cfg, frames=[0, 1, 2], progress=False)
    after, _ = _epe(net, data)
    assert res.train_frames == (0, 1, 2) and res.train_samples == len(data["photo"]) and res.steps == 15
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
    assert shipped.source.endswith("lite.pt")
    assert not torch.equal(next(learned.net.parameters()), next(shipped.net.parameters()))
    sched = make_predictor("learned,flow", RefineConfig(predictor="learned,flow"), subject=adapted)
    assert sched.predictors[0].source == "the subject's adapted network"


def test_at_most_max_frames_spread_over_the_chosen(truth_session):
    cfg = AdaptConfig(source="truth", max_frames=2, perturbations=1, val_every=0, steps=1)
    _, res = adapt_network(truth_session, cfg, frames=[0, 1, 2], progress=False)
    assert res.train_frames == (0, 2) and res.steps == 1


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
