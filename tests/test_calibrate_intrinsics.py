"""Calibration from photos: intrinsics-only calibration of single cameras, the classic
checkerboard detector as fallback, and the quality check that warns (and says what to film)
when intrinsics are poorly constrained."""

import dataclasses
import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import mvcap.calibrate as cal
from mvcap.calibrate import (
    CalibrateConfig,
    CalibrationError,
    calibrate_intrinsics_only,
    check_intrinsics,
    detect_source,
    load_board,
    load_intrinsics,
)
from mvcap.cameras import RigError
from mvcap.cli import main
from mvcap.rigio import load_rig
from mvcap.synth_board import BoardCaptureConfig, _calibration_rig, generate_board_capture

BOARD = "checkerboard_10x7"
# one camera of the calibration ring (off-centre principal point, k1/k2, p1/p2), small images
ONE_CAMERA = dataclasses.replace(_calibration_rig(), num_cameras=1, image_size=(480, 360))


def _photos(tmp_path_factory, name, **kw):
    cfg = BoardCaptureConfig(board=BOARD, rig=ONE_CAMERA, shared_every=1, format="png", **kw)
    return generate_board_capture(tmp_path_factory.mktemp(name), cfg, progress=False)


@pytest.fixture(scope="module")
def good_photos(tmp_path_factory):
    # 12 photos, the board close (0.7-1.1 m) all over the image and tilted 15-45 degrees; 8 of
    # them show the whole board
    return _photos(
        tmp_path_factory, "good", num_frames=12, distance_m=(0.7, 1.1), image_margin=0.15,
        closeup_tilt_deg=(15.0, 45.0), roll_deg=20.0, seed=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def poor_photos(tmp_path_factory):
    # 3 photos, the board far (1.3-1.5 m) in the middle of the image, hardly tilted
    return _photos(
        tmp_path_factory, "poor", num_frames=3, distance_m=(1.3, 1.5), image_margin=0.45,
        closeup_tilt_deg=(0.0, 8.0), seed=2,
    )  # fmt: skip


def _warped_board(shadow: bool, size=(800, 600)):
    """The printed board warped into an image by a known homography (optionally with a hard
    shadow over its left half); returns (image, expected corner pixels (M, 2))."""
    board = load_board(BOARD)
    tex, px = board.texture(24, 1.0)
    h, w = tex.shape
    a = math.radians(20)
    T = np.array([[1, 0, size[0] / 2], [0, 1, size[1] / 2], [0, 0, 1.0]])
    T = T @ np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    T = T @ np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    T = np.array([[1, 0.05, 0], [0.02, 1, 0], [2e-5, 1e-5, 1]]) @ T
    img = cv2.warpPerspective(tex, T, size, flags=cv2.INTER_LINEAR, borderValue=128)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    if shadow:
        img = img.astype(np.float32)
        img[:, : size[0] // 2] *= 0.3  # SB misses the board with the edge anywhere across it
        img = img.astype(np.uint8)
    tex_uv = (board.corners_board[:, :2] + board.square_length) / px - 0.5
    return img, cv2.perspectiveTransform(tex_uv.reshape(-1, 1, 2), T).reshape(-1, 2)


# ------------------------------------------------------------------------------------------
# intrinsics only
# ------------------------------------------------------------------------------------------
def test_intrinsics_only_one_camera_recovers_k(good_photos, tmp_path):
    out = tmp_path / "lens" / "intrinsics.toml"
    args = ["calibrate", f"cam00={good_photos.sources['cam00']}", "--board", BOARD, "--intrinsics-only"]
    res = CliRunner().invoke(main, args + ["--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "intrinsics only" in res.output and "| cam00 |" in res.output
    assert "warning:" not in res.output, res.output  # a well spread set: no quality warning
    lens = load_intrinsics(out)["cam00"]
    gt = good_photos.rig[0]
    assert lens.image_size == (480, 360)
    # within 0.5 % focal and 3 px principal point (measured: 0.05 %, 0.6 px)
    assert np.abs(np.diag(lens.K)[:2] / np.diag(gt.K)[:2] - 1).max() < 0.005
    assert np.abs(lens.K[:2, 2] - gt.K[:2, 2]).max() < 3.0
    # the lens model: distorted positions of rays across the image agree within 1 px
    xy = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 7), np.linspace(-0.4, 0.4, 5)), -1).reshape(-1, 2)
    pts = np.concatenate([xy, np.ones((len(xy), 1))], 1)
    pg, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), gt.K, gt.dist)
    pe, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), lens.K, lens.dist)
    assert np.abs(pg - pe).max() < 1.0
    assert (tmp_path / "lens" / "intrinsics_report" / "cam00.png").exists()
    # the intrinsics file is no rig: rig readers say what it is and how to use it
    with pytest.raises(RigError, match="intrinsics only.*--intrinsics"):
        load_rig(out)


def test_poor_photos_warn_and_say_what_to_film(poor_photos, tmp_path):
    res = calibrate_intrinsics_only(
        {"cam00": poor_photos.sources["cam00"]}, CalibrateConfig(board=BOARD), progress=False
    )
    (rep,) = res.cameras
    assert rep.frames_intrinsics == 3  # calibrated all the same: warnings, not an error
    text = "\n".join(res.warnings)
    assert all(w.startswith("camera 'cam00': ") for w in res.warnings), text
    assert "only 3 view(s)" in text and "film 3 or more others" in text
    assert "no board corner in its top-left" in text and "near the image edges and corners" in text
    assert "uncertain intrinsics" in text and "tilted in different directions" in text
    # through the CLI: printed as warnings, and kept in the intrinsics file and the report
    out = tmp_path / "intr.toml"
    args = ["calibrate", f"cam00={poor_photos.sources['cam00']}", "--board", BOARD, "--intrinsics-only"]
    cli = CliRunner().invoke(main, args + ["--out", str(out), "--quiet"])
    assert cli.exit_code == 0, cli.output
    assert cli.output.count("warning: camera 'cam00'") == len(res.warnings)
    assert "only 3 view(s)" in out.read_text() and "## Warnings" in (tmp_path / "intr_report" / "report.md").read_text()


def test_unusual_distortion_warns(poor_photos):
    """The issue's case: k2 = +2.34 fitted from 3 photos with ~0.1 px error must warn."""
    board = load_board(BOARD)
    det = detect_source(board, "cam00", poor_photos.sources["cam00"], progress=False)
    ci = cal.calibrate_intrinsics(board, det, CalibrateConfig(board=BOARD), min_frames=3)
    odd = dataclasses.replace(ci, dist=np.array([-0.3, 2.34, 0.0, 0.0, 0.0]), rms_px=0.1)
    warns = check_intrinsics(board, odd).warnings
    assert any("unusual lens distortion (k1 = -0.300, k2 = +2.340" in w for w in warns), warns
    # a plausible lens with the same views: no distortion warning
    plain = dataclasses.replace(ci, dist=np.array([-0.1, 0.03, 0.0, 0.0, 0.0]))
    assert not any("unusual lens distortion" in w for w in check_intrinsics(board, plain).warnings)
    # principal point far off the centre
    K = ci.K.copy()
    K[0, 2] += 0.2 * 480
    off = check_intrinsics(board, dataclasses.replace(ci, K=K)).warnings
    assert any("principal point" in w and "tilted" in w for w in off), off


def test_intrinsics_only_needs_three_views_not_shared_ones(poor_photos, tmp_path):
    # two cameras that never see the board at the same time: fine for intrinsics only
    src = poor_photos.sources["cam00"]
    res = calibrate_intrinsics_only({"a": src, "b": src}, CalibrateConfig(board=BOARD), progress=False)
    assert [c.camera for c in res.cameras] == ["a", "b"]
    with pytest.raises(CalibrationError, match="camera 'a'.*only 3 of 3 frames.*at least 4"):
        calibrate_intrinsics_only(
            {"a": src}, CalibrateConfig(board=BOARD, min_frames_intrinsics_only=4), progress=False
        )
    with pytest.raises(CalibrationError, match="min_frames_intrinsics_only must be >= 3"):
        CalibrateConfig(min_frames_intrinsics_only=2)
    with pytest.raises(CalibrationError, match="checkerboard_fallback must be 'photos'"):
        CalibrateConfig(checkerboard_fallback="yes")
    cli = CliRunner().invoke(
        main, ["calibrate", str(src), "--intrinsics-only", "--world-frame", "0", "--out", str(tmp_path / "i.toml")]
    )
    assert cli.exit_code == 2 and "--world-frame cannot be used with --intrinsics-only" in cli.output


def test_load_intrinsics_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cam_0]\nname = "c"\nsize = [640, 480]\nmatrix = [[1, 0, 0], [0, 1, 0]]\ndistortions = []\n'
                   '[metadata]\nkind = "intrinsics"\n')  # fmt: skip
    with pytest.raises(CalibrationError, match=r"bad.toml .*camera 'c'.*3x3"):
        load_intrinsics(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes("# caméra\n".encode("latin-1"))
    with pytest.raises(CalibrationError, match="not a UTF-8 text file"):
        load_intrinsics(latin)


# ------------------------------------------------------------------------------------------
# the classic checkerboard detector as fallback
# ------------------------------------------------------------------------------------------
def test_classic_detector_finds_a_shadowed_board_sb_misses():
    board = load_board(BOARD)
    img, expect = _warped_board(shadow=True)
    assert not cv2.findChessboardCornersSB(img, board.inner_size)[0]  # SB misses it
    ids, uv, method = board.detector()(img)
    assert method == "classic" and len(ids) == board.num_corners
    # sub-pixel after refinement, away from the shadow's edge (x = 400) that pulls the corners on it
    err = np.abs(uv - expect[ids]).max(1)
    clear = np.abs(expect[ids, 0] - 400) > 10
    assert clear.sum() > 40 and err[clear].max() < 0.2, err
    assert len(board.detector(fallback=False)(img)[0]) == 0
    clean, expect = _warped_board(shadow=False)
    ids, uv, method = board.detector()(clean)
    assert method == "sb" and np.abs(uv - expect[ids]).max() < 0.2


def test_classic_detector_on_a_downscaled_copy_refines_at_full_resolution(monkeypatch):
    board = load_board(BOARD)
    img, expect = _warped_board(shadow=False, size=(1200, 900))
    monkeypatch.setattr(cal, "CLASSIC_MAX_SIDE", 500)  # detect on a 500 x 375 copy
    monkeypatch.setattr(cal.cv2, "findChessboardCornersSB", lambda *a, **k: (False, None))
    ids, uv, method = board.detector()(img)
    assert method == "classic" and len(ids) == board.num_corners
    assert np.abs(uv - expect[ids]).max() < 0.2


def test_detections_count_each_detector(tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    for i, shadow in enumerate([False, True, False, True, True]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), _warped_board(shadow)[0])
    cv2.imwrite(str(folder / "005.png"), np.full((600, 800), 128, np.uint8))  # no board
    det = detect_source(load_board(BOARD), "cam", folder, progress=False)
    assert det.found_by() == {"sb": 2, "classic": 3}
    assert det.methods == ("sb", "classic", "sb", "classic", "classic", "")
    det = detect_source(load_board(BOARD), "cam", folder, progress=False, fallback=False)
    assert det.found_by() == {"sb": 2}


def test_classic_detector_labels_corners_like_the_board(monkeypatch):
    """Corner order normalised as for SB: the board turned by quarter turns gives the same labels."""
    board = load_board(BOARD)
    monkeypatch.setattr(cal.cv2, "findChessboardCornersSB", lambda *a, **k: (False, None))
    tex, px = board.texture(24, 1.0)
    h, w = tex.shape
    for quarter in range(4):
        a = quarter * math.pi / 2 + 0.1
        T = np.array([[math.cos(a), -math.sin(a), 400], [math.sin(a), math.cos(a), 300], [0, 0, 1.0]])
        T = (
            np.array([[1, 0.05, 0], [0.02, 1, 0], [2e-5, 1e-5, 1]])
            @ T
            @ np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
        )
        img = cv2.warpPerspective(tex, T, (800, 600), flags=cv2.INTER_LINEAR, borderValue=128)
        ids, uv, method = board.detector()(img)
        assert method == "classic" and len(ids) == board.num_corners, quarter
        tex_uv = (board.corners_board[ids, :2] + board.square_length) / px - 0.5
        expect = cv2.perspectiveTransform(tex_uv.reshape(-1, 1, 2), T).reshape(-1, 2)
        assert np.abs(uv - expect).max() < 0.2, quarter
