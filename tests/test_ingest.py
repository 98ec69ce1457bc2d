"""Ingest round trips: a session -> videos / image folders (export_frames) -> ingest -> the same frames."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from mvcap.cameras import Rig
from mvcap.capture import Session
from mvcap.cli import main
from mvcap.config import ConfigError, load_config
from mvcap.ingest import IngestConfig, IngestError, export_frames, ingest
from mvcap.synth import RigConfig, make_ring_rig

T, W, H = 12, 96, 64  # non-square so that swapped sizes are detectable
FPS = 25.0


def _frames(V: int) -> np.ndarray:
    """(T, V, H, W, 3) uint8: a smooth per-camera pattern plus a brightness step per frame, so
    that frames stay identifiable after lossy video coding (mean level 12 * t apart)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    out = np.zeros((T, V, H, W, 3), np.uint8)
    for v in range(V):
        base = 20 * (1 + np.sin(x / (9 + 3 * v) + v)) + 10 * (1 + np.cos(y / 7.0))  # 0..60
        for t in range(T):
            img = np.stack([base + 12 * t, base * 0.5 + 12 * t + 5 * v, 60 - base + 12 * t], -1)
            out[t, v] = np.clip(img, 0, 255).round().astype(np.uint8)
    return out


@pytest.fixture
def src(tmp_path):
    """A 3-camera, 12-frame session with known frames: (path, rig, frames (T, V, H, W, 3))."""
    rig = make_ring_rig(RigConfig(num_cameras=3, image_size=(W, H)), np.random.default_rng(0))
    frames = _frames(len(rig))
    path = tmp_path / "src.h5"
    with Session.create(path, rig, T, fps=FPS) as s:
        for t in range(T):
            s.write_frame(t, frames[t])
        s.mark_complete()
    return path, rig, frames


def _read_all(path) -> np.ndarray:
    with Session.open(path) as s:
        assert s.complete
        return np.stack([s.read_frame(t) for t in range(s.num_frames)])


def _left_behind(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


def test_png_round_trip_with_range_stride_and_offsets(src, tmp_path):
    path, rig, frames = src
    exp = export_frames(path, tmp_path / "png", format="png")
    assert (exp.rig_path).exists() and sorted(exp.paths) == list(rig.names)
    # all frames, defaults: lossless, identical
    out = tmp_path / "all.h5"
    res = ingest(exp.out_dir, exp.rig_path, out, IngestConfig(fps=FPS), progress=False)
    assert res.num_frames == T and res.fps == FPS
    np.testing.assert_array_equal(_read_all(out), frames)
    # range, stride and per-camera offsets: view c of frame i is source frame start + stride * i + offset_c
    cfg = IngestConfig(frames="1:9:2", offsets={"cam01": 1, "cam02": 3}, fps=FPS)
    res = ingest(exp.out_dir, rig, tmp_path / "sub.h5", cfg, progress=False)
    np.testing.assert_array_equal(res.source_frames, [1, 3, 5, 7])
    got = _read_all(res.path)
    for i, t in enumerate(res.source_frames):
        for v, k in enumerate([0, 1, 3]):
            np.testing.assert_array_equal(got[i, v], frames[t + k, v])
    with Session.open(res.path) as s:
        assert s.fps == FPS / 2 and s.num_frames == 4
        np.testing.assert_allclose(s.timestamps("cam00"), np.array([1, 3, 5, 7]) / FPS)
        np.testing.assert_array_equal(s.rig.to_arrays()["K"], rig.to_arrays()["K"])
        assert s.provenance["ingest"]["fingerprint"]["offsets"] == {"cam00": 0, "cam01": 1, "cam02": 3}
    # stop unset: as far as the shortest camera allows (cam02 with offset 3 has frames up to 11 -> t <= 8)
    res = ingest(
        exp.out_dir, rig, tmp_path / "open.h5", IngestConfig(frames="2::3", offsets={"cam02": 3}), progress=False
    )
    np.testing.assert_array_equal(res.source_frames, [2, 5, 8])


def test_mp4_round_trip_is_close_and_keeps_frame_order(src, tmp_path):
    path, rig, frames = src
    exp = export_frames(path, tmp_path / "mp4", format="mp4")
    assert all(p.suffix == ".mp4" and p.stat().st_size > 0 for p in exp.paths.values())
    cfg = IngestConfig(frames="1::2", offsets={"cam01": 2})
    res = ingest(exp.out_dir, exp.rig_path, tmp_path / "v.h5", cfg, progress=False)
    assert res.fps == FPS / 2  # the video's rate over the stride
    np.testing.assert_array_equal(res.source_frames, [1, 3, 5, 7, 9])  # cam01 + 2 ends at frame 11
    got = _read_all(res.path).astype(np.float64)
    levels = frames.reshape(T, len(rig), -1).mean(-1)  # (T, V) mean level per source frame
    for i, t in enumerate(res.source_frames):
        for v, k in enumerate([0, 2, 0]):
            # lossy codec: close to the right frame (mean abs error a few levels) ...
            err = np.abs(got[i, v] - frames[t + k, v]).mean()
            assert err < 4.0, (i, v, err)
            # ... and nearest to it among all frames of that camera (frames differ by 12 levels)
            assert int(np.argmin(np.abs(levels[:, v] - got[i, v].mean()))) == t + k


def test_camera_name_mismatch_lists_both_sides(src, tmp_path):
    path, rig, _ = src
    exp = export_frames(path, tmp_path / "png", format="png")
    shutil.move(exp.paths["cam02"], exp.out_dir / "Cam02")
    shutil.copytree(exp.paths["cam00"], exp.out_dir / "side")
    out = tmp_path / "x.h5"
    with pytest.raises(IngestError) as e:
        ingest(exp.out_dir, rig, out, progress=False)
    msg = str(e.value)
    assert "rig cameras without a source: ['cam02']" in msg
    assert "Cam02" in msg and "side" in msg and "only in case" in msg
    assert _left_behind(out) == []


def test_image_size_mismatch_names_the_camera(src, tmp_path):
    path, rig, _ = src
    exp = export_frames(path, tmp_path / "png", format="png")
    swapped = Rig(tuple(replace(c, image_size=(H, W)) if c.name == "cam01" else c for c in rig))
    out = tmp_path / "x.h5"
    with pytest.raises(
        IngestError, match=r"camera 'cam01': cam01 is 96x64 but the rig calibrates it at 64x96.*rotated"
    ):
        ingest(exp.out_dir, swapped, out, progress=False)
    big = rig.with_image_size((2 * W, 2 * H))  # videos at half the calibrated resolution
    with pytest.raises(IngestError, match=r"same aspect ratio.*--image-size 96 64"):
        ingest(exp.out_dir, big, out, progress=False)
    assert _left_behind(out) == []
    # the suggested fix: store at the videos' size with the rig rescaled
    res = ingest(exp.out_dir, big, out, IngestConfig(image_size=(W, H)), progress=False)
    with Session.open(res.path) as s:
        np.testing.assert_allclose(s.rig.to_arrays()["K"], rig.to_arrays()["K"], atol=1e-9)


def test_too_short_is_reported_before_writing(src, tmp_path):
    path, rig, _ = src
    exp = export_frames(path, tmp_path / "mp4", format="mp4")
    out = tmp_path / "x.h5"
    with pytest.raises(IngestError) as e:
        ingest(exp.out_dir, rig, out, IngestConfig(frames=":10", offsets={"cam02": 4}), progress=False)
    msg = str(e.value)
    assert "camera 'cam02': cam02.mp4 has 12 frames but the range needs 14" in msg
    assert "cam00" not in msg and "lower stop to at most 8" in msg
    with pytest.raises(IngestError, match=r"start at frame >= 2"):
        ingest(exp.out_dir, rig, out, IngestConfig(offsets={"cam01": -2}), progress=False)
    with pytest.raises(IngestError, match=r"unknown camera\(s\) \['cam9'\]"):
        ingest(exp.out_dir, rig, out, IngestConfig(offsets={"cam9": 1}), progress=False)
    assert _left_behind(out) == []


def test_read_failure_midway_leaves_nothing(src, tmp_path, monkeypatch):
    path, rig, _ = src
    png = export_frames(path, tmp_path / "png", format="png")
    (png.paths["cam01"] / "000005.png").write_bytes(b"not a png")
    out = tmp_path / "x.h5"
    with pytest.raises(IngestError, match=r"camera 'cam01': cannot read image .*000005.png \(frame 5"):
        ingest(png.out_dir, rig, out, progress=False)
    assert _left_behind(out) == []
    # a container that overstates its length: the pre-check passes, decoding stops mid-way
    mp4 = export_frames(path, tmp_path / "mp4", format="mp4")
    import mvcap.sources as sources

    real = sources._video_frame_count
    monkeypatch.setattr(sources, "_video_frame_count", lambda cap: real(cap) + 5)
    with pytest.raises(IngestError, match=r"camera 'cam00': decoding stopped at frame 12 .* reports 17 frames"):
        ingest(mp4.out_dir, rig, out, progress=False)
    assert _left_behind(out) == []
    # counting decodable frames instead of trusting the header fixes it
    res = ingest(mp4.out_dir, rig, out, IngestConfig(count_frames=True), progress=False)
    assert res.num_frames == T


def test_interrupted_ingest_resumes(src, tmp_path, monkeypatch):
    path, rig, frames = src
    exp = export_frames(path, tmp_path / "png", format="png")
    out = tmp_path / "take.h5"
    real_write = Session.write_frame
    calls = []

    def flaky(self, t, images, timestamp=None):
        calls.append(t)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C while writing the 4th frame
        real_write(self, t, images, timestamp)

    monkeypatch.setattr(Session, "write_frame", flaky)
    with pytest.raises(KeyboardInterrupt):
        ingest(exp.out_dir, rig, out, IngestConfig(fps=FPS), progress=False)
    monkeypatch.setattr(Session, "write_frame", real_write)
    assert not out.exists()
    partial = tmp_path / "take.h5.partial"
    with Session.open(partial) as s:
        assert not s.complete and int(s.frames_written.sum()) == 3
    # a different command does not silently reuse it
    with pytest.raises(IngestError, match=r"different command \(differs in: \['frames', 'num_frames'\]\).*overwrite"):
        ingest(exp.out_dir, rig, out, IngestConfig(fps=FPS, frames=":6"), progress=False)
    assert partial.exists()
    res = ingest(exp.out_dir, rig, out, IngestConfig(fps=FPS), progress=False)
    assert res.resumed_frames == 3 and not partial.exists()
    np.testing.assert_array_equal(_read_all(out), frames)


def test_cli_ingest_and_existing_output(src, tmp_path):
    path, rig, frames = src
    exp = export_frames(path, tmp_path / "png", format="png")
    out = tmp_path / "cli.h5"
    runner = CliRunner()
    args = ["ingest", str(exp.out_dir), "--out", str(out), "--fps", "25", "--frames", "::2", "--offset", "cam01=1"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "6 frames x 3 views" in r.output
    got = _read_all(out)
    np.testing.assert_array_equal(got[2, 1], frames[5, 1])
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and "already exists" in r.output and "Traceback" not in r.output
    assert runner.invoke(main, args + ["--overwrite"]).exit_code == 0
    shutil.move(exp.paths["cam00"], exp.out_dir / "camA")
    r = runner.invoke(main, ["ingest", str(exp.out_dir), "--out", str(tmp_path / "y.h5")])
    assert r.exit_code == 2 and r.output.startswith("error: camera names") and "['cam00']" in r.output


def test_config_from_toml(tmp_path):
    p = tmp_path / "ingest.toml"
    p.write_text('frames = "3::2"\nimage_size = [320, 240]\n[offsets]\ncam1 = -1\ncam2 = 4\n')
    cfg = load_config(IngestConfig, p)
    assert cfg.offsets == {"cam1": -1, "cam2": 4} and cfg.image_size == (320, 240) and cfg.frames == "3::2"
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(IngestConfig, p, ["strides=2"])
    with pytest.raises(IngestError, match="offsets must map camera names to integers"):
        load_config(IngestConfig, p, ["offsets.cam1=1.5"])


def test_missing_image_is_an_error_or_an_explicit_gap_never_a_shift(src, tmp_path):
    """Image-folder frames are matched by the number in their names (issue 17: a camera missing
    one frame used to run one frame ahead from there on)."""
    path, rig, frames = src
    exp = export_frames(path, tmp_path / "png", format="png")
    (exp.paths["cam01"] / "000004.png").unlink()
    out = tmp_path / "x.h5"
    with pytest.raises(IngestError, match=r"camera 'cam01': no image for frame 4 .*allow_gaps \(CLI: --allow-gaps\)"):
        ingest(exp.out_dir, rig, out, IngestConfig(fps=FPS), progress=False)
    assert _left_behind(out) == []
    # a range that leaves the frame out needs no gap
    res = ingest(exp.out_dir, rig, out, IngestConfig(fps=FPS, frames="5:"), progress=False)
    np.testing.assert_array_equal(_read_all(out), frames[5:])
    # explicit gaps: the missing view is black and recorded; every other frame is the right one
    res = ingest(exp.out_dir, rig, out, IngestConfig(fps=FPS, allow_gaps=True), progress=False, overwrite=True)
    assert {c: m.tolist() for c, m in res.missing.items()} == {"cam01": [4]}
    got = _read_all(out)
    assert not got[4, 1].any()
    keep = np.ones((T, len(rig)), bool)
    keep[4, 1] = False
    np.testing.assert_array_equal(got[keep], frames[keep])
    with Session.open(out) as s:
        assert s.provenance["ingest"]["missing"] == {"cam01": [4]}
    # with an offset the same file is session frame 4 - 2 = 2 of cam01
    res = ingest(exp.out_dir, rig, out, IngestConfig(fps=FPS, allow_gaps=True, offsets={"cam01": 2}), progress=False,
                 overwrite=True)  # fmt: skip
    assert res.missing["cam01"].tolist() == [2]
    np.testing.assert_array_equal(_read_all(out)[3, 1], frames[5, 1])


def test_cli_ingest_frames_list_name_eq_path_and_gaps(src, tmp_path):
    path, rig, frames = src
    exp = export_frames(path, tmp_path / "png", format="png")
    for cam, pattern in (("cam00", "{}.png"), ("cam01", "c1_{:03d}.png"), ("cam02", "img_{:04d}.png")):
        for f in exp.paths[cam].iterdir():  # numbered from 1 (-> frame 0), each camera its own way
            f.rename(f.with_name(pattern.format(int(f.stem) + 1)))
    runner = CliRunner()
    named = [f"{c}={exp.out_dir / d}" for c, d in (("cam00", "cam00"), ("cam01", "cam01"), ("cam02", "cam02"))]
    out = tmp_path / "a.h5"
    args = ["ingest", *named, "--rig", str(exp.rig_path), "--out", str(out), "--frames", "0:2,5,9:12:2"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "5 frames x 3 views" in r.output and "step 1" in r.output
    np.testing.assert_array_equal(_read_all(out), frames[[0, 1, 5, 9, 11]])
    (exp.paths["cam02"] / "img_0008.png").unlink()  # frame 7 of cam02
    r = runner.invoke(main, ["ingest", str(exp.out_dir), "--out", str(tmp_path / "b.h5")])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert r.output.startswith("error: camera 'cam02': no image for frame 7")
    r = runner.invoke(main, ["ingest", str(exp.out_dir), "--out", str(tmp_path / "b.h5"), "--allow-gaps"])
    assert r.exit_code == 0 and "warning: camera 'cam02' has no image for session frame(s) 7" in r.output
    r = runner.invoke(main, ["ingest", str(exp.out_dir), "--out", str(tmp_path / "c.h5"), "--frames", "0:99"])
    assert r.exit_code == 2 and "shorter than the frame range" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["ingest", str(exp.out_dir), "--out", str(tmp_path / "c.h5"), "--frames", "4:x"])
    assert r.exit_code == 2 and r.output.startswith("error: frames '4:x': STOP 'x' is not a frame number")


# ------------------------------------------------------------------------------------------
# frames whose size differs from the calibration (--fit)
# ------------------------------------------------------------------------------------------
def _marker_frames(rig, point, n=2):
    """{camera: (n, H, W, 3) uint8} calibrated-size images holding a Gaussian blob at the
    projection of ``point`` (3,) and the projections (V, 2)."""
    import torch

    from mvcap.cameras import project

    uv = project(rig, torch.as_tensor(np.asarray(point, np.float64)[None]))[:, 0].numpy()
    out = {}
    for cam, (u, v) in zip(rig, uv, strict=True):
        y, x = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
        blob = 40 + 200 * np.exp(-((x - u) ** 2 + (y - v) ** 2) / (2 * 2.0**2))
        out[cam.name] = np.repeat(np.round(np.stack([blob] * 3, -1)).astype(np.uint8)[None], n, 0)
    return out, uv


def _centroid(img: np.ndarray) -> np.ndarray:
    g = img[..., 0].astype(np.float64) - 40
    g[g < 20] = 0
    y, x = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return np.array([(g * x).sum(), (g * y).sum()]) / g.sum()


def _write_folders(root, frames: dict) -> None:
    import cv2

    for cam, imgs in frames.items():
        (root / cam).mkdir(parents=True)
        for t, img in enumerate(imgs):
            cv2.imwrite(str(root / cam / f"{t:06d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


@pytest.mark.parametrize(
    "mode, frame_size",
    [
        ("pad", (96, 56)),
        ("pad-topleft", (90, 60)),
        ("crop", (110, 72)),
        ("crop-topleft", (100, 70)),
        ("resize", (48, 32)),
    ],
)
def test_fit_brings_frames_to_the_calibration(tmp_path, mode, frame_size):
    """A 3D point's marker lies at its projection through the stored rig after each fit mode:
    the rig stays the calibration, the frames are brought to it."""
    from mvcap.ingest import fit_offset

    rig = make_ring_rig(RigConfig(num_cameras=2, image_size=(W, H)), np.random.default_rng(0))
    point = np.array([0.05, 1.0, -0.03])  # near the ring's aim point, seen by both cameras
    calib, uv = _marker_frames(rig, point)
    w, h = frame_size
    sources = dict(calib)
    if mode == "resize":
        import cv2

        sources["cam01"] = np.stack([cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in calib["cam01"]])
    else:  # the frames the camera gives: the calibrated image with the inverse of the fit applied
        dx, dy = fit_offset((w, h), (W, H), mode)  # calibrated pixel = frame pixel + (dx, dy)
        frame = np.full((2, h, w, 3), 40, np.uint8)
        ys, xs = np.mgrid[0:h, 0:w]
        inside = (ys + dy >= 0) & (ys + dy < H) & (xs + dx >= 0) & (xs + dx < W)
        frame[:, inside] = calib["cam01"][:, (ys + dy)[inside], (xs + dx)[inside]]
        sources["cam01"] = frame
    _write_folders(tmp_path / "src", sources)
    out = tmp_path / "s.h5"
    with pytest.raises(IngestError, match=rf"camera 'cam01': cam01 is {w}x{h} but the rig calibrates it at {W}x{H}"):
        ingest(tmp_path / "src", rig, out, progress=False)
    res = ingest(tmp_path / "src", rig, out, IngestConfig(fit_views={"cam01": mode}), progress=False)
    assert res.fits == {"cam01": mode}
    with Session.open(out) as s:
        assert s.image_sizes == {"cam00": (W, H), "cam01": (W, H)}
        np.testing.assert_array_equal(s.rig.to_arrays()["K"], rig.to_arrays()["K"])  # the calibration is kept
        assert s.provenance["ingest"]["fit"]["cam01"]["mode"] == mode
        img = s.read_view("cam01", [0])[0]
    np.testing.assert_allclose(_centroid(calib["cam01"][0]), uv[1], atol=0.1)  # the marker is where it projects
    # ... and so it is in the stored frame: exactly for a crop or pad, to a fraction of a pixel for a resize
    np.testing.assert_allclose(_centroid(img), _centroid(calib["cam01"][0]), atol=0.2 if mode == "resize" else 1e-9)
    if mode.startswith("pad"):  # the padding is black
        dx, dy = fit_offset((w, h), (W, H), mode)
        outside = np.ones((H, W), bool)
        outside[dy : dy + h, dx : dx + w] = False
        assert outside.any() and img[outside].max() == 0 and img[~outside].min() >= 40


def test_fit_offsets_and_errors_say_which_mode_fits(src, tmp_path):
    from mvcap.ingest import fit_frame, fit_offset
    from mvcap.rigio import save_rig

    assert fit_offset((1920, 1080), (1920, 1088), "pad") == (0, 4)
    assert fit_offset((1920, 1080), (1920, 1088), "pad-topleft") == (0, 0)
    assert fit_offset((1920, 1088), (1920, 1080), "crop") == (0, -4)
    with pytest.raises(IngestError, match="no larger than the calibration"):
        fit_offset((1920, 1090), (1920, 1088), "pad")
    img = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    np.testing.assert_array_equal(fit_frame(img, (6, 4), "crop"), img[1:5, 1:7])
    np.testing.assert_array_equal(fit_frame(fit_frame(img, (10, 8), "pad"), (8, 6), "crop"), img)

    path, rig, _ = src
    exp = export_frames(path, tmp_path / "png", format="png")
    out = tmp_path / "x.h5"
    # 96x64 frames vs a 96x72 calibration (aspect ratios 1 % apart): pad, not the "rescaled" hint
    tall = Rig(tuple(replace(c, image_size=(W, H + 8)) if c.name == "cam01" else c for c in rig))
    with pytest.raises(IngestError) as e:
        ingest(exp.out_dir, tall, out, progress=False)
    msg = str(e.value)
    assert "camera 'cam01'" in msg and "8 rows fewer than the calibration" in msg and "--fit pad" in msg
    assert "--fit cam01=pad" in msg and "same aspect ratio" not in msg and "cam00" not in msg
    wide = Rig(tuple(replace(c, image_size=(W - 6, H)) if c.name == "cam02" else c for c in rig))
    with pytest.raises(IngestError, match=r"camera 'cam02'.*6 columns more than the calibration.*--fit crop"):
        ingest(exp.out_dir, wide, out, progress=False)
    big = rig.with_image_size((2 * W, 2 * H))
    with pytest.raises(IngestError, match=r"same aspect ratio.*--fit resize"):
        ingest(exp.out_dir, big, out, progress=False)
    with pytest.raises(IngestError, match=r"camera 'cam01'.*fit 'crop' needs frames no smaller.*--fit pad"):
        ingest(exp.out_dir, tall, out, IngestConfig(fit="crop"), progress=False)
    with pytest.raises(IngestError, match=r"unknown camera\(s\) \['camX'\]"):
        ingest(exp.out_dir, tall, out, IngestConfig(fit_views={"camX": "pad"}), progress=False)
    with pytest.raises(IngestError, match="fit must be one of"):
        IngestConfig(fit="stretch")
    assert _left_behind(out) == []
    # the CLI: a session-wide mode, applied only where sizes differ
    save_rig(tall, tmp_path / "tall.toml")
    args = ["ingest", str(exp.out_dir), "--rig", str(tmp_path / "tall.toml"), "--out", str(out), "--fit", "pad"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "camera 'cam01': frames brought to the calibrated size by --fit pad" in r.output
    with Session.open(out) as s:
        assert s.image_sizes["cam01"] == (W, H + 8) and s.image_sizes["cam00"] == (W, H)
