"""The displacement network, its data, training loop and predictor (fast, CPU)."""

from __future__ import annotations

import csv
import dataclasses

import cv2
import numpy as np
import pytest
import torch

from mvcap.nets.displacement import (
    INITIAL_SCALE,
    CropWindow,
    DisplacementNet,
    NetConfig,
    confidence_loss,
    crop_passes,
    crop_window,
    displacement_loss,
    encode_render,
    endpoint_error,
    select_render_passes,
    training_loss,
    uncrop_flow,
)

TINY = NetConfig(
    crop_size=32,
    stem_width=8,
    encoder_width=8,
    encoder_out=8,
    encoder_blocks=1,
    hg_width=8,
    hg_stacks=2,
    hg_depth=2,
    hg_blocks=1,
    head_blocks=1,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ network
def test_output_shapes_one_per_stack():
    net = DisplacementNet(TINY)
    out = net(torch.randn(3, 3, 32, 32), torch.randn(3, 11, 32, 32))
    assert len(out) == TINY.hg_stacks
    assert all(o.shape == (3, 2, 32, 32) for o in out)


def test_paper_and_lite_configs_build():
    from mvcap.config import load_config

    paper = load_config(NetConfig, "nets/paper.toml")
    lite = load_config(NetConfig, "nets/lite.toml")
    assert paper.hg_stacks == 4 and paper.crop_size == 256 and paper.encoder_out == 256 and paper.confidence
    assert lite.hg_stacks == 2 and lite.crop_size in (96, 128)
    net = DisplacementNet(lite).eval()
    with torch.no_grad():
        out = net(
            torch.randn(1, 3, lite.crop_size, lite.crop_size),
            torch.randn(1, 11, lite.crop_size, lite.crop_size),
        )
    assert out[-1].shape == (1, 2, lite.crop_size, lite.crop_size)


def test_bad_inputs_and_configs_are_explained():
    net = DisplacementNet(TINY)
    with pytest.raises(ValueError, match="render"):
        net(torch.randn(1, 3, 32, 32), torch.randn(1, 10, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        NetConfig(crop_size=100, hg_depth=4)
    with pytest.raises(ValueError, match="render_passes"):
        NetConfig(render_passes=("rgb", "albedo", "mask"))
    # the "w/o texture" ablation: fewer render channels
    cfg = dataclasses.replace(TINY, render_passes=("depth", "normal", "template", "mask"))
    assert DisplacementNet(cfg)(torch.randn(1, 3, 32, 32), torch.randn(1, 8, 32, 32))[0].shape == (
        1,
        2,
        32,
        32,
    )


def test_loss_is_eq3_and_ignores_unmasked_pixels():
    B, S = 2, 8
    target = torch.zeros(B, 2, S, S)
    mask = torch.zeros(B, 1, S, S)
    mask[:, :, :4] = 1  # top half rendered
    pred = torch.zeros(B, 2, S, S)
    pred[:, :, 4:] = 1e6  # garbage off the mask
    pred[:, :, 4:, 0] = float("nan")
    assert float(displacement_loss([pred], target, mask)) == 0.0
    pred2 = pred.clone()
    pred2[:, 0, :4] = 0.5  # |dx| = 0.5 on half the pixels -> mean 0.25
    assert float(displacement_loss([pred2], target, mask)) == pytest.approx(0.25)
    assert float(displacement_loss([pred2, pred2, pred], target, mask)) == pytest.approx(0.5)  # summed over stacks
    assert float(endpoint_error(pred2, target, mask, scale=S)) == pytest.approx(0.5 * S)


def test_training_steps_decrease_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    net = DisplacementNet(TINY)
    B, S = 4, 32
    photo, render = torch.randn(B, 3, S, S), torch.randn(B, 11, S, S)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    target = torch.stack([0.05 * xx, -0.03 * yy])[None].repeat(B, 1, 1, 1) + 0.02
    mask = (xx.abs() < 0.6).float()[None, None].repeat(B, 1, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = displacement_loss(net(photo, render), target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a, b = DisplacementNet(TINY), DisplacementNet(TINY)
    b.load_state_dict(a.state_dict())
    b.grad_checkpointing = True
    x, r = torch.randn(2, 3, 32, 32), torch.randn(2, 11, 32, 32)
    t, m = torch.randn(2, 2, 32, 32) * 0.01, torch.ones(2, 1, 32, 32)
    displacement_loss(a(x, r), t, m).backward()
    displacement_loss(b(x, r), t, m).backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


# ------------------------------------------------------------------------- crop geometry
def test_selecting_passes_equals_encoding_them():
    rng = np.random.default_rng(0)
    S = 8
    passes = {
        k: rng.random((S, S, c)).astype(np.float32)
        for k, c in (("rgb", 3), ("depth", 1), ("normal", 3), ("template", 3))
    }
    cov = (rng.random((S, S)) > 0.3).astype(np.float32)
    everything = ("rgb", "depth", "normal", "template", "mask")
    full = encode_render(passes, cov, everything)
    for want in (("depth", "normal", "template", "mask"), ("rgb", "mask"), ("mask", "rgb")):
        assert torch.equal(select_render_passes(full[None], everything, want)[0], encode_render(passes, cov, want))
    with pytest.raises(ValueError, match="not in the input"):
        select_render_passes(full, ("rgb", "mask"), ("depth",))


def test_crop_window_is_square_and_enlarged():
    m = np.zeros((100, 120), bool)
    m[20:60, 50:70] = True  # 40 tall, 20 wide
    w = crop_window(m, 1.2)
    assert w.size == 48
    assert abs((w.x0 + w.size / 2) - 60) <= 0.5 and abs((w.y0 + w.size / 2) - 40) <= 0.5
    assert crop_window(np.zeros((5, 5), bool)) is None


def test_crop_and_uncrop_round_trip_a_smooth_field():
    H, W = 90, 110
    m = np.zeros((H, W), bool)
    m[10:80, 30:75] = True
    uu, vv = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    field = np.stack([0.1 * uu + 2.0, -0.05 * vv + 1.0], -1)  # pixels, affine in position
    for S in (32, 128):  # shrinking and enlarging
        w = crop_window(m, 1.2)
        crop, cov = crop_passes(field / w.size, m, w, S)
        back = uncrop_flow(crop, w, (W, H))
        inner = np.zeros_like(m)
        inner[14:76, 34:71] = True  # away from the silhouette edge
        assert np.abs(back[inner] - field[inner]).max() < 0.05
        assert np.all(back[: w.y0] == 0) if w.y0 > 0 else True


def test_crop_to_full_mapping_matches_uncrop():
    w = CropWindow(x0=-7, y0=13, size=50)
    S = 20
    ij = np.array([[0.0, 0.0], [19.0, 19.0], [4.5, 10.0]])
    full = w.crop_to_full(ij, S)
    assert np.allclose(w.full_to_crop(full, S), ij)
    # pixel centres: crop pixel 0 covers full pixels x0 .. x0 + size/S
    assert np.allclose(full[0], [w.x0 - 0.5 + 0.5 * 50 / 20, w.y0 - 0.5 + 0.5 * 50 / 20])


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def small_data():
    from mvcap.nets.data import DataConfig

    return DataConfig(
        image_size=(128, 128),
        num_subjects=2,
        num_cameras=2,
        texture_size=64,
        num_val=2,
        min_mask_px=50,
    )


def test_data_samples_shapes_and_determinism(small_data):
    from mvcap.nets.data import DisplacementDataset, SampleGenerator

    ds = DisplacementDataset(small_data, TINY, "train")
    a = ds[5]
    assert a["photo"].shape == (3, 32, 32) and a["render"].shape == (11, 32, 32)
    assert a["target"].shape == (2, 32, 32) and a["mask"].shape == (1, 32, 32)
    assert a["mask"].sum() > 10
    assert torch.isfinite(a["target"]).all() and torch.isfinite(a["render"]).all()
    assert float(a["photo"].min()) >= -1 and float(a["photo"].max()) <= 1
    b = SampleGenerator(small_data, TINY, small_data.seed).sample(5)  # fresh caches, same result
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = ds[6]
    assert not torch.equal(a["photo"], c["photo"])
    v = DisplacementDataset(small_data, TINY, "val")
    assert len(v) == 2 and not torch.equal(v[5 % 2]["photo"], a["photo"])


def test_data_target_matches_the_oracle(small_data):
    """The crop target, mapped back to full pixels, reproduces the oracle field."""
    from mvcap.nets.data import SampleGenerator

    g = SampleGenerator(small_data, TINY, 3)
    s = g.sample(0)
    m = s["mask"][0] > 0
    mag = s["target"].norm(dim=0)[m] * s["window"]
    assert float(mag.mean()) > 0.05  # the estimate is off the truth
    assert float(mag.max()) < 100


# what real footage adds (mvcap.nets.augment), and fine-tuning
REAL = dict(
    photo_jpeg_prob=1.0, photo_motion_blur_prob=1.0, bystander_prob=1.0, loose_prob=1.0,
    clutter_prob=1.0, occluder_prob=1.0,
)  # fmt: skip


def test_real_world_additions_change_the_photo_not_the_target(small_data):
    """Each addition changes the photo only: the estimate's render, its mask and the
    displacement target are those of the clean sample (same scene, same estimate)."""
    from mvcap.nets.data import SampleGenerator

    clean = SampleGenerator(small_data, TINY, 4).sample(1)
    for key in REAL:
        cfg = dataclasses.replace(small_data, **{key: 1.0})
        s = SampleGenerator(cfg, TINY, 4).sample(1)
        for k in ("render", "mask", "target", "window"):
            assert torch.equal(s[k], clean[k]), (key, k)
        assert not torch.equal(s["photo"], clean["photo"]), key
    every = SampleGenerator(dataclasses.replace(small_data, **REAL), TINY, 4)
    a, b = every.sample(1), SampleGenerator(dataclasses.replace(small_data, **REAL), TINY, 4).sample(1)
    assert all(torch.equal(a[k], b[k]) for k in a)  # still a pure function of (seed, index)


def test_tiles_are_parts_of_the_window_at_the_fine_pass_resolution(small_data, monkeypatch):
    """With ``tile_prob`` a sample is an S-crop of a part of its whole-body window, ``zoom``
    times smaller, centred on a rendered pixel, and its estimate errs by ``tile_error_scale``."""
    from mvcap.nets import data as D

    calls, real = [], D.tile_window

    def spy(mask, side, rng):
        calls.append((mask.copy(), side, real(mask, side, rng)))
        return calls[-1][2]

    monkeypatch.setattr(D, "tile_window", spy)
    tiled = dataclasses.replace(small_data, tile_prob=1.0, tile_zoom=(2.0, 2.0))
    tile = D.SampleGenerator(tiled, TINY, 4).sample(1)
    ((mask, side, win),) = calls
    assert side == max(round(crop_window(mask, TINY.crop_scale).size / 2), 16) == int(tile["window"])
    assert mask[win.y0 + side // 2, win.x0 + side // 2] and (int(tile["x0"]), int(tile["y0"])) == (win.x0, win.y0)
    mag = tile["target"].norm(dim=0)[tile["mask"][0] > 0] * tile["window"]
    assert 0.05 < float(mag.mean()) and float(mag.max()) < 100  # full-image pixels, as the whole crop's
    # no error drawn: the estimate is the truth, nothing to move
    exact = dataclasses.replace(tiled, tile_error_scale=(0.0, 0.0), gt_pose_prob=0.0, betas_std=(0.0, 0.0))
    still = D.SampleGenerator(exact, TINY, 4).sample(1)
    assert float(still["target"].abs().max() * still["window"]) < 1e-3


def test_a_tile_target_is_in_the_units_the_fine_pass_reads():
    """target * window = full-image pixels for a tile too; the fine pass's crop of zoom * S
    over the whole window reads the network's output as that (see LearnedPredictor)."""
    from mvcap.nets.data import crop_sample
    from mvcap.nets.displacement import tile_window
    from mvcap.render import PASS_CHANNELS

    H = W = 96
    yy, xx = np.mgrid[:H, :W]
    mask = (yy - 48) ** 2 / 40**2 + (xx - 48) ** 2 / 20**2 < 1
    channels = [ch for p in ("rgb", "depth", "normal", "template", "mask") for ch in PASS_CHANNELS[p]]
    passes = np.random.default_rng(0).random((H, W, len(channels))).astype(np.float32)
    photo = np.full((H, W, 3), 128, np.uint8)
    flow = np.broadcast_to(np.float32([3.0, -2.0]), (H, W, 2))
    tile = tile_window(mask, 40, np.random.default_rng(1))
    assert mask[tile.y0 + 20, tile.x0 + 20] and tile.size == 40
    s = crop_sample(TINY, photo, passes, channels, mask, flow, window=tile)
    m = s["mask"][0] > 0
    full = s["target"][:, m] * s["window"]
    assert torch.allclose(full, torch.tensor([[3.0], [-2.0]]), atol=1e-4)
    with pytest.raises(ValueError, match="mask is empty"):
        tile_window(np.zeros((4, 4), bool), 2, np.random.default_rng(0))


def test_bad_augmentation_settings_are_explained():
    from mvcap.nets.data import DataConfig

    with pytest.raises(ValueError, match="loose_prob is a probability"):
        DataConfig(loose_prob=1.5)
    with pytest.raises(ValueError, match="clutter_shapes is a range"):
        DataConfig(clutter_shapes=(8, 2))
    with pytest.raises(ValueError, match="tile_zoom must be >= 1"):
        DataConfig(tile_zoom=(0.5, 2.0))


def test_shipped_configs_keep_their_samples(small_data, monkeypatch):
    """With every addition off no random number is drawn for them: the samples of configs
    written before them (the clean network's training run) are unchanged."""
    from mvcap.nets import data as D

    calls = []
    real = D.SampleGenerator._real_world

    def spy(self, rng, photos, *args):
        before = rng.bit_generator.state
        out = real(self, rng, photos, *args)
        calls.append(before == rng.bit_generator.state and np.array_equal(out, photos))
        return out

    monkeypatch.setattr(D.SampleGenerator, "_real_world", spy)
    D.SampleGenerator(small_data, TINY, 4).sample(2)
    assert calls == [True]


def test_fine_tuning_starts_from_the_given_weights(tmp_path, small_data):
    from mvcap.nets.displacement import DisplacementNet
    from mvcap.nets.predictor import WeightsError
    from mvcap.nets.train import TrainConfig, save_weights, train

    torch.manual_seed(7)
    start = DisplacementNet(TINY)
    save_weights(start, tmp_path / "start.pt")
    cfg = TrainConfig(
        net=TINY, data=small_data, steps=10, batch_size=2, num_workers=0, threads=1, lr=1e-9,
        val_every=100, checkpoint_every=100, warmup_steps=1, vis_samples=0,
        init_weights=str(tmp_path / "start.pt"),
    )  # fmt: skip
    r = train(cfg, tmp_path / "run", progress=False, max_steps=1)
    got = torch.load(r.checkpoint, weights_only=True)["model"]
    ref = start.state_dict()
    # a tiny learning rate: the trained weights are the start's (batch-norm statistics move)
    learned = [k for k in ref if "running" not in k and "num_batches" not in k]
    assert all(torch.allclose(got[k], ref[k], atol=1e-5) for k in learned)
    # a plain network starts a flow-prior run as flow itself (no correction)
    fp = dataclasses.replace(cfg, net=dataclasses.replace(TINY, flow_prior=True))
    got = torch.load(train(fp, tmp_path / "fp", progress=False, max_steps=1).checkpoint, weights_only=True)["model"]
    ref = start.with_flow_prior().state_dict()
    assert all(torch.allclose(got[k], ref[k], atol=1e-5) for k in learned)
    other = dataclasses.replace(cfg, net=dataclasses.replace(TINY, hg_width=16))
    with pytest.raises(WeightsError, match="another network config"):
        train(other, tmp_path / "b", progress=False, max_steps=1)
    missing = dataclasses.replace(cfg, init_weights=str(tmp_path / "none.pt"))
    with pytest.raises(FileNotFoundError, match="no displacement-network weights"):
        train(missing, tmp_path / "c", progress=False, max_steps=1)


def test_step_batch_sampler_resumes():
    from mvcap.nets.data import StepBatchSampler

    full = list(StepBatchSampler(3, 0, 4))
    assert full[2] == [6, 7, 8]
    assert list(StepBatchSampler(3, 2, 2)) == full[2:]


# ---------------------------------------------------------------------------- training
def test_checkpoint_resume_round_trip(tmp_path, small_data):
    from mvcap.nets.train import TrainConfig, train

    cfg = TrainConfig(
        net=TINY,
        data=small_data,
        steps=50,
        batch_size=2,
        num_workers=0,
        threads=1,
        log_every=1,
        val_every=2,
        checkpoint_every=100,
        warmup_steps=2,
        vis_samples=2,
    )
    r1 = train(cfg, tmp_path, progress=False, max_steps=2)
    assert r1.step == 2 and r1.checkpoint.exists() and r1.weights.exists()
    assert (tmp_path / "val_fields.png").exists() and (tmp_path / "log.csv").exists()
    ck = torch.load(r1.checkpoint, weights_only=True)
    assert ck["step"] == 2

    # resume: starts at the saved step with identical weights and optimizer state
    from mvcap.nets import train as T

    seen = {}
    orig = T.DisplacementNet.load_state_dict

    def spy(self, state, *a, **kw):
        res = orig(self, state, *a, **kw)
        seen["weights"] = {k: v.clone() for k, v in self.state_dict().items()}
        return res

    T.DisplacementNet.load_state_dict = spy
    try:
        r2 = train(cfg, tmp_path, progress=False, max_steps=1)
    finally:
        T.DisplacementNet.load_state_dict = orig
    assert all(torch.equal(seen["weights"][k], ck["model"][k]) for k in ck["model"])
    assert r2.step == 3
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and rows[-1].startswith("3,")

    # best.pt holds the weights of the lowest validation EPE logged, across the resume
    with open(tmp_path / "log.csv") as f:
        vals = [(float(r["val_epe_px"]), int(r["step"])) for r in csv.DictReader(f) if r["val_epe_px"]]
    assert len(vals) == 2  # step 2 (val_every) and step 3 (the end of the run)
    best_epe, best_step = min(vals)
    assert r2.best == tmp_path / "best.pt" and r2.best_step == best_step
    assert r2.best_val_epe_px == pytest.approx(best_epe, abs=1e-3)
    meta = torch.load(r2.best, weights_only=True)["meta"]
    assert meta["step"] == best_step and meta["val_epe_px"] == pytest.approx(best_epe, abs=1e-3)
    assert "best: step" in r2.describe()

    # a fresh run from step 2 sees the same data as the resumed one: 2 + 1 == 3 steps
    with pytest.raises(ValueError, match="different \\[net\\] config"):
        train(
            dataclasses.replace(cfg, net=dataclasses.replace(TINY, hg_width=16)),
            tmp_path,
            progress=False,
            max_steps=1,
        )


def test_budgeted_training_stops_on_time_and_resumes_the_clock(tmp_path, small_data, monkeypatch):
    """budget_minutes: the run stops once the budget is spent (also across resumes) and the
    cosine decay follows the seconds spent, not the step count."""
    from mvcap.nets import train as T

    now = [1000.0]

    def fake_time():  # every call advances 3 s: the budget is counted in training seconds
        now[0] += 3.0
        return now[0]

    monkeypatch.setattr(T.time, "time", fake_time)
    cfg = T.TrainConfig(
        net=dataclasses.replace(TINY, confidence=True), data=small_data, steps=10_000, batch_size=2,
        num_workers=0, threads=1, log_every=1, val_every=1000, checkpoint_every=1000, warmup_steps=1,
        vis_samples=0, budget_minutes=0.5, lr_min_ratio=0.1,
    )  # fmt: skip
    r1 = T.train(cfg, tmp_path, progress=False)
    ck = torch.load(r1.checkpoint, weights_only=True)
    assert 1 < r1.step < 30 and ck["trained_s"] >= 30.0
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["val_epe_px"]  # the last step is validated
    lrs = [float(r["lr"]) for r in rows if r["lr"]]
    assert lrs[-1] < 1.5 * cfg.lr * cfg.lr_min_ratio and lrs[0] > 0.5 * cfg.lr  # decayed over the budget
    # the budget is spent: resuming trains no further step
    r2 = T.train(cfg, tmp_path, progress=False)
    assert r2.step == r1.step
    # a larger budget continues where the clock stopped
    r3 = T.train(dataclasses.replace(cfg, budget_minutes=1.0), tmp_path, progress=False)
    assert r3.step > r1.step
    assert torch.load(r3.checkpoint, weights_only=True)["trained_s"] >= 60.0
    # a network trained with a confidence head loads with it (and its head was trained)
    from mvcap.nets.predictor import LearnedPredictor

    head = LearnedPredictor.load(r3.weights, device="cpu").net.scale_head
    assert head[2].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="num_workers"):
        T.TrainConfig(num_workers=-2)
    assert T._num_workers(dataclasses.replace(cfg, num_workers=-1)) >= 1


def test_train_config_files_load():
    from mvcap.nets.train import load_train_config

    lite = load_train_config("nets/train_lite.toml")
    paper = load_train_config("nets/train_paper.toml", ["batch_size=4"])
    assert lite.net.hg_stacks == 2 and paper.net.hg_stacks == 4 and paper.batch_size == 4
    gpu = load_train_config("nets/train_gpu.toml")
    assert gpu.net == paper.net and gpu.budget_minutes > 0 and gpu.checkpoint_minutes <= 1.0
    real = load_train_config("nets/train_lite_real.toml")
    mix = load_train_config("nets/train_lite_mix.toml")
    tiles = load_train_config("nets/train_lite_tiles.toml")
    assert real.net == lite.net == mix.net == tiles.net and real.init_weights.endswith("lite_clean_step4500.pt")
    assert len({lite.data.seed, real.data.seed, mix.data.seed, tiles.data.seed}) == 4  # each stage: new samples
    assert real.data.val_seed == mix.data.val_seed == lite.data.val_seed == tiles.data.val_seed
    assert tiles.data.tile_prob > 0 and mix.data.tile_prob == 0 and tiles.init_weights == "lite"
    assert 0 < mix.data.bystander_prob < real.data.bystander_prob
    assert gpu.data.photo_jpeg_prob > 0 and lite.data.photo_jpeg_prob == 0  # the clean run: none
    fp1, fp2 = load_train_config("nets/train_lite_flowprior.toml"), load_train_config("nets/train_lite_flowprior2.toml")
    assert fp1.net == fp2.net == dataclasses.replace(lite.net, flow_prior=True) and fp1.init_weights == "lite"
    assert fp2.init_weights == "runs/lite_flowprior/best.pt" and fp2.data.error_scale[1] < fp1.data.error_scale[1]
    assert len({fp1.data.seed, fp2.data.seed, mix.data.seed}) == 3


# ---------------------------------------------------------------------------- predictor
def test_weights_missing_or_wrong_give_clear_errors(tmp_path):
    from mvcap.nets.predictor import LearnedPredictor, WeightsError
    from mvcap.nets.train import save_weights

    with pytest.raises(FileNotFoundError, match="train-displacement"):
        LearnedPredictor.load(tmp_path / "nope.pt")
    # shipped networks by name; an unknown name lists them
    assert LearnedPredictor.load("lite_flowprior", device="cpu").cfg.flow_prior
    assert not LearnedPredictor.load("lite", device="cpu").cfg.flow_prior
    with pytest.raises(FileNotFoundError, match="lite, lite_flowprior"):
        LearnedPredictor.load("lite_nope")
    junk = tmp_path / "junk.pt"
    torch.save({"hello": 1}, junk)
    with pytest.raises(WeightsError, match="not a mvcap displacement"):
        LearnedPredictor.load(junk)
    good = save_weights(DisplacementNet(TINY), tmp_path / "w.pt")
    p = LearnedPredictor.load(good, device="cpu")
    assert p.cfg == TINY
    with pytest.raises(WeightsError, match="another network config"):
        LearnedPredictor.load(good, expected=dataclasses.replace(TINY, hg_stacks=3))
    blob = torch.load(good, weights_only=True)
    blob["net_config"]["hg_width"] = 16  # weights no longer fit the stored config
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="do not fit"):
        LearnedPredictor.load(tmp_path / "bad.pt")


class _ConstantNet(torch.nn.Module):
    """Outputs a constant displacement (crop pixels / S) everywhere, and with ``scale`` a
    constant expected error (same units)."""

    def __init__(self, cfg, value, scale=None):
        super().__init__()
        self.cfg = cfg
        self.value = torch.tensor(value, dtype=torch.float32)
        self.scale = scale

    def forward_with_scale(self, photo, render):
        B, _, S, _ = photo.shape
        log_scale = None if self.scale is None else torch.full((B, 1, S, S), float(np.log(self.scale)))
        return [self.value.view(1, 2, 1, 1).expand(B, 2, S, S).clone()], log_scale

    def forward(self, photo, render):
        return self.forward_with_scale(photo, render)[0]


def _fake_request(H=80, W=100):
    from mvcap.displace import PredictRequest
    from mvcap.render import Fragments, RenderPasses

    V = 2
    mask = torch.zeros(V, H, W, dtype=torch.bool)
    mask[0, 10:70, 40:60] = True  # 60 tall -> window 72
    mask[1, 30:40, 5:95] = True  # 90 wide -> window 108 (beyond the image)
    C = (
        "rgb_r",
        "rgb_g",
        "rgb_b",
        "depth",
        "normal_x",
        "normal_y",
        "normal_z",
        "template_x",
        "template_y",
        "template_z",
        "mask",
    )
    img = torch.rand(V, H, W, len(C)) * mask[..., None]
    img[..., 3] = torch.where(mask, 3.0, 0.0)
    img[..., -1] = mask.float()
    frags = Fragments(torch.where(mask, 0, -1), torch.zeros(V, H, W, 3), img[..., 3], mask)
    photos = np.random.default_rng(0).integers(0, 255, (V, H, W, 3), dtype=np.uint8)
    return PredictRequest(
        photos,
        RenderPasses(img, C),
        frags,
        None,
        torch.zeros(3, 3),
        torch.zeros(1, 3, dtype=torch.long),
    )


def test_predictor_maps_crop_prediction_to_full_image_pixels():
    from mvcap.nets.predictor import LearnedPredictor

    req = _fake_request()
    value = (0.1, -0.05)  # crop px / S
    pred = LearnedPredictor(_ConstantNet(TINY, value))(req)
    mask = req.fragments.mask
    assert pred.flow.shape == (2, 80, 100, 2) and pred.confidence.shape == (2, 80, 100)
    for v, L in ((0, 72), (1, 108)):
        w = crop_window(mask[v].numpy(), TINY.crop_scale)
        assert w.size == L
        f = pred.flow[v][mask[v]]
        assert torch.allclose(f, torch.tensor([value[0] * L, value[1] * L]), atol=1e-4)
    assert torch.all(pred.flow[~mask] == 0)
    assert torch.equal(pred.confidence, mask.float())
    # with an expected error b: full weight up to confidence_px, then (confidence_px / b)^2
    for scale, px in ((0.02, 3.0), (0.1, 3.0)):
        pred = LearnedPredictor(_ConstantNet(TINY, value, scale), confidence_px=px)(req)
        assert torch.allclose(pred.flow[0][mask[0]], torch.tensor([[value[0] * 72, value[1] * 72]]), atol=1e-4)
        for v, L in ((0, 72), (1, 108)):
            want = min(1.0, (px / (scale * L)) ** 2)
            assert torch.allclose(pred.confidence[v][mask[v]], torch.tensor(want), rtol=1e-4), (scale, v)
        assert torch.all(pred.confidence[~mask] == 0)


def test_coarse_to_fine_crop_size_follows_the_image_resolution():
    from mvcap.nets.predictor import LearnedPredictor

    p = LearnedPredictor(DisplacementNet(TINY), fine_px=2.0, max_crop=100)  # TINY: S = 32, sizes step 4
    assert p.max_crop == 100 and p.render_max_side == 200
    assert p.fine_size(120, image_px=1.0) == 60  # 2 image px per crop px
    assert p.fine_size(120, image_px=3.0) == 100  # capped at max_crop
    assert p.fine_size(50, image_px=3.0) == 52  # no finer than the request's own pixels
    assert p.fine_size(40, image_px=1.0) == 20  # a small person: the training size is fine enough
    assert LearnedPredictor(DisplacementNet(TINY)).fine_size(400, 8.0) == 32  # fine_px = 0: off


def test_warping_by_the_first_pass_moves_the_photo_and_extends_the_flow():
    from mvcap.nets.displacement import extend_nearest
    from mvcap.nets.predictor import _compose, _warp

    H, W = 40, 50
    mask = np.zeros((H, W), bool)
    mask[10:30, 20:30] = True
    flow = np.zeros((H, W, 2), np.float32)
    flow[mask] = (3.0, -2.0)
    flow[10:30, 20] = (1.0, 0.0)  # the left column differs: its value extends to the left
    ext = extend_nearest(flow, mask)
    assert np.allclose(ext[15, 0], (1.0, 0.0)) and np.allclose(ext[15, 49], (3.0, -2.0))
    assert np.allclose(ext[0, 25], (3.0, -2.0)) and np.array_equal(ext[mask], flow[mask])
    photo = np.zeros((H, W, 3), np.uint8)
    photo[..., 0] = np.arange(W)[None, :] * 4
    photo[..., 1] = np.arange(H)[:, None] * 4
    win = CropWindow(15, 5, 30)  # x 15..44, y 5..34
    out, x0, y0, part = _warp(photo, flow, mask, win)
    assert (x0, y0) == (15, 5) and part.shape == (30, 30, 2)
    assert tuple(out[20, 25, :2]) == tuple(photo[18, 28, :2])  # sampled at x + (3, -2)
    assert tuple(out[20, 17, :2]) == tuple(photo[20, 18, :2])  # off the mask: the left column's (1, 0)
    assert np.array_equal(out[:5], photo[:5]) and np.array_equal(out[:, 45:], photo[:, 45:])  # outside: as is
    # composing: x -> x + r(x) + flow(x + r(x))
    fine = np.zeros((H, W, 3), np.float32)
    fine[..., 0] = 2.0
    fine[..., 2] = 0.5  # a confidence channel is the fine pass's
    total = _compose(fine, part, x0, y0)
    assert np.allclose(total[20, 22, :2], (5.0, -2.0))  # r = (2, 0) lands on (3, -2)
    assert np.allclose(total[20, 18, :2], (3.0, 0.0))  # r lands on the left column's (1, 0)
    assert np.allclose(total[..., 2], 0.5)


def test_coarse_to_fine_composes_the_second_pass_on_the_first():
    from mvcap.nets.predictor import LearnedPredictor

    req = _fake_request()
    value = (0.1, -0.05)  # crop px / S, at any input size
    pred = LearnedPredictor(_ConstantNet(TINY, value, 0.02), fine_px=1.0, max_crop=64, confidence_px=0.3)(req)
    mask = req.fragments.mask
    for v, L in ((0, 72), (1, 108)):
        # first pass value * L; the second at S2 = 64 sees the rest at twice the resolution:
        # its output (crop px / 32 of a 64 crop) means half as many image pixels
        f = pred.flow[v][mask[v]]
        assert torch.allclose(f, 1.5 * L * torch.tensor(value), atol=1e-3), v
        want = (0.3 / (0.02 * L * 0.5)) ** 2  # from the fine pass's expected error
        assert torch.allclose(pred.confidence[v][mask[v]], torch.tensor(want), rtol=1e-4)
    assert torch.all(pred.flow[~mask] == 0)
    # the request's pixels are 3 image pixels each: view 1 (108 px) gets S2 = 64 <= 108 / 1.5,
    # view 0 (72 px, 216 image px) gets 72 / 1.5 = 48
    fine = LearnedPredictor(_ConstantNet(TINY, value), fine_px=4.5, max_crop=64)(
        dataclasses.replace(req, image_px=np.array([3.0, 3.0]))
    )
    for v, L, S2 in ((0, 72, 48), (1, 108, 64)):
        assert torch.allclose(fine.flow[v][mask[v]], (1 + 32 / S2) * L * torch.tensor(value), atol=1e-3), v
    # in the images' own pixels, view 0 needs no second pass at 4.5 px: 72 / 4.5 = 16 <= 32
    coarse = LearnedPredictor(_ConstantNet(TINY, value), fine_px=4.5, max_crop=64)(req)
    assert torch.allclose(coarse.flow[0][mask[0]], 72 * torch.tensor(value), atol=1e-4)


def test_a_confidence_head_learns_the_expected_error_and_keeps_the_displacement():
    torch.manual_seed(0)
    net = DisplacementNet(TINY)
    photo, render = torch.randn(2, 3, 32, 32), torch.randn(2, 11, 32, 32)
    withc = net.eval().with_confidence().eval()
    assert withc.cfg.confidence and net.with_confidence() is not net and withc.with_confidence() is withc
    preds, log_scale = withc.forward_with_scale(photo, render)
    assert torch.equal(preds[-1], net(photo, render)[-1]) and net.forward_with_scale(photo, render)[1] is None
    assert torch.allclose(log_scale, torch.tensor(np.log(INITIAL_SCALE), dtype=torch.float32))
    # the loss is minimal where the scale is the mean absolute error per component
    target, mask = torch.zeros(2, 2, 32, 32), torch.ones(2, 1, 32, 32)
    pred = torch.zeros(2, 2, 32, 32)
    pred[:, 0] = 0.3  # |e| = 0.3 in x, 0 in y: b = 0.15
    loss = [float(confidence_loss(torch.full_like(mask, np.log(b)), pred, target, mask)) for b in (0.1, 0.15, 0.2)]
    assert loss[1] < loss[0] and loss[1] < loss[2]
    scale = torch.full_like(mask, np.log(0.15), requires_grad=True)
    training_loss([pred.requires_grad_()], scale, target, mask).backward()
    assert abs(float(scale.grad.sum())) < 1e-4  # at the optimum; and the error is detached:
    assert torch.allclose(pred.grad, torch.sign(pred.detach()) / (2 * 32 * 32))  # eq. 3's gradient only
    # the head leaves the displacement's training alone: the same gradients everywhere else
    target = torch.full((2, 2, 32, 32), 0.05)
    for model in (net.train(), withc.train()):
        model.zero_grad()
        training_loss(*model.forward_with_scale(photo, render), target, mask).backward()
    for name, p in net.named_parameters():
        assert torch.allclose(p.grad, dict(withc.named_parameters())[name].grad, atol=1e-6), name
    assert withc.scale_head[2].weight.grad.abs().sum() > 0  # the head itself learns


def test_predictor_runs_a_real_network_on_a_rendered_body():
    """End to end on a real render: shapes, finite values, zero off the silhouette."""
    from mvcap.body import load_body_model
    from mvcap.cameras import Camera, Rig
    from mvcap.displace import PredictRequest
    from mvcap.nets.predictor import LearnedPredictor
    from mvcap.render import render

    model = load_body_model()
    with torch.no_grad():
        verts = model(torch.zeros(1, 24, 3)).vertices[0] + torch.tensor([0.0, 0.3, 0.0])
    R = np.diag([1.0, -1.0, -1.0])  # looking along -Z at the body's front
    cam = Camera(
        "c",
        np.array([[150.0, 0, 63.5], [0, 150.0, 63.5], [0, 0, 1]]),
        np.zeros(5),
        R,
        np.array([0.0, 0.3, 3.0]),
        (128, 128),
    )
    rig = Rig((cam,))
    frags, passes = render(
        rig,
        verts,
        model.faces,
        template_vertices=model.template_vertices()[0],
        passes=("rgb", "depth", "normal", "template", "mask"),
    )
    assert frags.mask.any()
    photos = np.full((1, 128, 128, 3), 128, np.uint8)
    out = LearnedPredictor(DisplacementNet(TINY))(PredictRequest(photos, passes, frags, rig, verts, model.faces))
    assert out.flow.shape == (1, 128, 128, 2) and torch.isfinite(out.flow).all()
    assert torch.all(out.flow[~frags.mask] == 0)


def test_the_tensor_contract_equals_the_opencv_one():
    """Crops, render encoding and un-cropping on tensors (what a GPU run uses) give the OpenCV
    path's numbers: windows inside, across and beyond the image, shrinking and enlarging."""
    from mvcap.nets.displacement import (
        crop_passes_tensor,
        crop_resize,
        crop_resize_tensor,
        encode_render_tensor,
        mask_boxes,
        resize_tensor,
        uncrop_flow_tensor,
        window_of_box,
    )

    rng = np.random.default_rng(0)
    img = rng.random((90, 70, 5)).astype(np.float32)
    mask = rng.random((90, 70)) > 0.3
    t = torch.from_numpy
    for win, S in ((CropWindow(-20, 30, 61), 32), (CropWindow(10, 10, 32), 32), (CropWindow(40, 60, 20), 32),
                   (CropWindow(-5, -7, 120), 48), (CropWindow(100, 0, 40), 32)):  # fmt: skip
        np.testing.assert_allclose(crop_resize_tensor(t(img), win, S).numpy(), crop_resize(img, win, S), atol=1e-5)
        vals, cov = crop_passes(img, mask, win, S)
        vals_t, cov_t = crop_passes_tensor(t(img), t(mask), win, S)
        np.testing.assert_allclose(vals_t.numpy(), vals, atol=1e-5)
        np.testing.assert_allclose(cov_t.numpy(), cov, atol=1e-6)
        passes = {"rgb": vals[..., :3], "depth": vals[..., 3:4], "normal": vals[..., 1:4]}
        names = ("rgb", "depth", "normal", "mask")
        want = encode_render(passes, cov, names)
        got = encode_render_tensor({k: t(v) for k, v in passes.items()}, t(cov), names)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        pred = rng.random((S, S, 3)).astype(np.float32)
        # OpenCV's remap places its samples to 1/32 px; the tensor path does not round
        np.testing.assert_allclose(uncrop_flow_tensor(t(pred), win, (70, 90)).numpy(),
                                   uncrop_flow(pred, win, (70, 90)), atol=win.size / S / 32)  # fmt: skip
    photo = rng.integers(0, 256, (90, 70, 3)).astype(np.uint8)
    for size in ((35, 45), (70, 90), (23, 61)):
        ref = cv2.resize(photo, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        assert np.abs(resize_tensor(t(photo), size).numpy() - ref).max() <= 0.5 + 1e-3  # OpenCV rounds to uint8
    masks = np.zeros((3, 90, 70), bool)
    masks[0, 10:20, 5:40] = True
    masks[2] = mask
    boxes = mask_boxes(t(masks))
    assert boxes[1].tolist() == [-1, -1, -1, -1]
    for v in (0, 2):
        assert window_of_box(boxes[v], 1.2) == crop_window(masks[v], 1.2)


def test_the_predictor_on_tensors_equals_it_on_arrays():
    """The learned predictor given tensors (a request on a device) predicts the same fields as
    given the photos as an array (its host path), with or without a confidence head."""
    from mvcap.nets.predictor import LearnedPredictor

    req = _fake_request()
    torch.manual_seed(0)
    for net in (DisplacementNet(TINY), DisplacementNet(dataclasses.replace(TINY, confidence=True))):
        pred = LearnedPredictor(net.eval(), confidence_px=3.0)
        host = pred(req)
        on_tensors = pred(dataclasses.replace(req, photos=torch.as_tensor(req.photos)))
        torch.testing.assert_close(on_tensors.flow, host.flow, atol=2e-3, rtol=0)
        torch.testing.assert_close(on_tensors.confidence, host.confidence, atol=1e-4, rtol=0)
        assert host.flow.abs().max() > 0.1  # a field, not zeros


def test_a_flow_prior_network_starts_as_flow_and_adds_its_correction():
    """with_flow_prior keeps the plain network's weights and corrects nothing, so the predictor
    gives DIS flow's field and confidence (host and tensor paths); a correction of c crop
    pixels moves the field by c * window / S image pixels."""
    from mvcap.displace import FlowPredictor
    from mvcap.nets.predictor import LearnedPredictor

    req = _fake_request()
    torch.manual_seed(0)
    plain = DisplacementNet(TINY).eval()
    net = plain.with_flow_prior().eval()
    assert net.cfg.flow_prior and net.cfg.render_in_channels == TINY.render_in_channels + 3
    mine, theirs = net.state_dict(), plain.state_dict()
    first = "render_encoder.layers.0.weight"
    assert torch.equal(mine[first][:, : TINY.render_in_channels], theirs[first]) and not mine[first][:, -3:].any()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if k != first and not k.startswith("outputs."))
    flow = FlowPredictor()(req)
    assert flow.flow.abs().max() > 0.1 and flow.confidence.max() > 0.1
    pred = LearnedPredictor(net)
    assert pred.render_max_side == 0  # flow needs the native image
    for r in (req, dataclasses.replace(req, photos=torch.as_tensor(req.photos))):
        out = pred(r)
        torch.testing.assert_close(out.flow, flow.flow, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.confidence, flow.confidence, atol=1e-6, rtol=0)
    with torch.no_grad():  # a constant correction of 2 crop px in x
        net.outputs[-1].bias.copy_(torch.tensor([2.0, 0.0]) / TINY.crop_size)
    for r in (req, dataclasses.replace(req, photos=torch.as_tensor(req.photos))):
        moved = (LearnedPredictor(net)(r).flow - flow.flow)[0][req.fragments.mask[0]]
        torch.testing.assert_close(moved[:, 0], torch.full_like(moved[:, 0], 2.0 * 72 / 32), atol=1e-4, rtol=0)
        assert moved[:, 1].abs().max() < 1e-4
    with pytest.raises(ValueError, match="no coarse-to-fine pass"):
        LearnedPredictor(net, fine_px=2.0)


def test_flow_prior_samples_carry_the_flow_and_learn_its_correction(small_data):
    """A flow-prior sample is the plain sample plus the flow's channels, and its target is the
    true displacement minus the flow."""
    from mvcap.nets.data import SampleGenerator, crop_sample

    fp = dataclasses.replace(TINY, flow_prior=True)
    a, b = SampleGenerator(small_data, TINY, 3).sample(0), SampleGenerator(small_data, fp, 3).sample(0)
    C, S = TINY.render_in_channels, TINY.crop_size
    assert b["render"].shape == (C + 3, S, S) and torch.equal(a["photo"], b["photo"])
    assert torch.equal(a["render"], b["render"][:C])
    prior = b["render"][C : C + 2] / S
    assert prior.abs().max() > 0  # flow found something
    torch.testing.assert_close(b["target"] + prior, a["target"], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="pass prior"):
        crop_sample(fp, np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 11), np.float32),
                    _fake_request().passes.channels, np.ones((20, 20), bool))  # fmt: skip


def test_loader_with_a_worker_process_matches_direct_samples(small_data):
    from mvcap.nets.data import DisplacementDataset, StepBatchSampler, make_loader

    ds = DisplacementDataset(small_data, TINY, "train")
    loader = make_loader(ds, StepBatchSampler(2, start_step=1, num_steps=1), num_workers=1)
    (batch,) = list(loader)
    assert batch["photo"].shape == (2, 3, 32, 32)
    assert torch.equal(batch["target"][1], ds[3]["target"])  # step 1, batch 2 -> indices 2, 3


def test_reused_batches_resume_like_an_uninterrupted_run(tmp_path, small_data):
    """reuse / reuse_pool: a loaded batch serves several steps, each drawing from the pool of
    recent batches; resuming mid-batch refills the pool, so 3 + 4 steps equal 7 in one go."""
    from mvcap.nets import train as T
    from mvcap.nets.train import TrainConfig, train

    cfg = TrainConfig(net=TINY, data=small_data, steps=7, batch_size=2, num_workers=0, threads=1,
                      val_every=100, checkpoint_every=100, warmup_steps=1, vis_samples=0,
                      reuse=3, reuse_pool=2)  # fmt: skip
    loads = []
    orig = T._step_batches

    def spy(cfg_, batches, first_load, step, device):
        loads.append(first_load)
        yield from orig(cfg_, batches, first_load, step, device)

    # the first training of a process renders its samples (num_workers = 0) on numba's
    # initial thread count, whose sums round differently: compare runs made after one
    train(dataclasses.replace(cfg, steps=1), tmp_path / "warm", progress=False)
    T._step_batches = spy
    try:
        whole = train(cfg, tmp_path / "whole", progress=False)
        train(cfg, tmp_path / "split", progress=False, max_steps=3)
        split = train(cfg, tmp_path / "split", progress=False)
    finally:
        T._step_batches = orig
    assert whole.step == split.step == 7
    assert loads == [0, 0, 0]  # the resume at step 3 starts in batch 1 and loads batch 0 again
    a, b = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (whole, split))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="reuse and reuse_pool must be >= 1"):
        TrainConfig(reuse=0)
