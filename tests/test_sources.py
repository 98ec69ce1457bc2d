"""Camera sources (mvcap.sources): finding videos / image folders, frame identity by file-name number."""

import cv2
import numpy as np
import pytest

import mvcap.calibrate
import mvcap.ingest
from mvcap import sources
from mvcap.calibrate import CalibrationError
from mvcap.errors import MvcapError
from mvcap.ingest import IngestError
from mvcap.sources import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    FrameReader,
    SourceError,
    check_gaps,
    probe_sources,
    resolve_sources,
)


def _images(folder, numbers, name="img_{:04d}.png", size=(6, 4)):
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:  # pixel value = frame number, to see which file was read
        cv2.imwrite(str(folder / name.format(n)), np.full((size[1], size[0], 3), n, np.uint8))
    return folder


def _video(path, n=5, size=(32, 24)):
    """An MPEG-4 video (written as .mp4, then given ``path``'s extension: .m4v is the same container)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + "_tmp.mp4")
    w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert w.isOpened()
    for t in range(n):
        w.write(np.full((size[1], size[0], 3), 40 * t, np.uint8))
    w.release()
    return tmp.rename(path)


def test_one_extension_list_for_calibrate_and_ingest():
    assert mvcap.ingest.VIDEO_EXTS is VIDEO_EXTS and mvcap.ingest.IMAGE_EXTS is IMAGE_EXTS
    assert mvcap.calibrate.resolve_sources.__module__ == "mvcap.calibrate"  # a thin wrapper ...
    assert {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm"} <= set(VIDEO_EXTS)  # ... over the one list
    assert {".png", ".jpg", ".tif", ".webp"} <= set(IMAGE_EXTS)


def test_folder_of_sources_and_name_eq_path(tmp_path):
    root = tmp_path / "take"
    _video(root / "camB.m4v")  # an extension only calibrate knew before
    _images(root / "camA", [0, 1, 2])
    assert probe_sources(resolve_sources(root))["camB"].num_frames == 5
    (root / "notes.txt").write_text("x")
    (root / "empty").mkdir()
    (root / "rig.toml").write_text("")
    assert resolve_sources(root) == {"camA": root / "camA", "camB": root / "camB.m4v"}
    # NAME=PATH renames; a plain path is named after its file / folder
    got = resolve_sources([f"left={root / 'camB.m4v'}", str(root / "camA")])
    assert got == {"left": root / "camB.m4v", "camA": root / "camA"}
    assert resolve_sources({"x": root / "camA"}) == {"x": root / "camA"}
    # errors are the caller's type (and MvcapErrors)
    with pytest.raises(IngestError, match="camera 'y': source .* does not exist"):
        resolve_sources([f"y={tmp_path / 'nope.mp4'}"], error=IngestError)
    with pytest.raises(SourceError, match="both name camera 'camA'"):
        resolve_sources([root / "camA", f"camA={root / 'camB.m4v'}"])
    with pytest.raises(SourceError, match="not a known video type"):
        resolve_sources([root / "notes.txt"])
    with pytest.raises(SourceError, match="holds no videos"):
        resolve_sources(root / "empty")
    assert issubclass(SourceError, MvcapError)


def test_probe_video_and_images(tmp_path):
    vid = _video(tmp_path / "v.mp4", n=5)
    imgs = _images(tmp_path / "imgs", [1, 2, 3, 10])  # numbered from 1, frames 4..9 missing
    infos = probe_sources({"v": vid, "i": imgs})
    assert list(infos) == ["v", "i"]
    v, i = infos["v"], infos["i"]
    assert (v.kind, v.frame_size, v.num_frames, v.fps) == ("video", (32, 24), 5, 10.0)
    # frame ids count from the smallest first number: 1 -> frame 0
    assert (i.kind, i.frame_size, i.frame_ids, i.num_frames) == ("images", (6, 4), (0, 1, 2, 9), 10)
    assert i.file_for(9).name == "img_0010.png" and i.file_for(4) is None
    assert i.lacks(np.arange(10)).tolist() == [3, 4, 5, 6, 7, 8] and v.lacks([0, 9]).size == 0
    with FrameReader(v) as r:
        assert r.read(0).shape == (24, 32, 3) and abs(float(r.read(3).mean()) - 120) < 8
    with FrameReader(i) as r:
        assert int(r.read(9)[0, 0, 0]) == 10
        with pytest.raises(SourceError, match="no image for frame 4"):
            r.read(4)


def test_frame_identity_is_the_file_name_number_not_the_position(tmp_path):
    """img10 follows img9 (natural order); a file missing in one camera never shifts it."""
    a = _images(tmp_path / "a", range(12), name="a{}.jpg")  # unpadded: lexical order would put 10 before 2
    b = _images(tmp_path / "b", [k for k in range(12) if k != 5], name="frame_{:06d}.png")
    infos = probe_sources({"a": a, "b": b})
    assert infos["a"].frame_ids == tuple(range(12))
    with FrameReader(infos["b"]) as r:
        assert int(r.read(6)[0, 0, 0]) == 6  # by list position it would have been 7
    with pytest.raises(SourceError, match=r"camera 'b': no image for frame 5 .*frame_000004.png', 'frame_000006.png'"):
        check_gaps(infos, {c: np.arange(12) for c in infos}, allow=False, error=SourceError, hint=" or accept gaps")
    gaps = check_gaps(infos, {c: np.arange(12) for c in infos}, allow=True, error=SourceError)
    assert {c: g.tolist() for c, g in gaps.items()} == {"b": [5]}


def test_unnumbered_or_duplicate_frame_numbers(tmp_path):
    bad = _images(tmp_path / "bad", [1], name="img{}.png")
    cv2.imwrite(str(bad / "cover.png"), np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(CalibrationError, match=r"camera 'bad': image .*cover.png has no frame number"):
        probe_sources({"bad": bad}, error=CalibrationError)
    dup = _images(tmp_path / "dup", [3], name="img{}.png")
    _images(dup, [3], name="IMG_{:03d}.jpg")
    with pytest.raises(SourceError, match=r"several images .* have frame number 3"):
        probe_sources({"dup": dup})


def test_calibrate_reads_image_folders_by_number(tmp_path):
    """Calibration's frame reader follows the numbers too; a gap is an error unless allowed."""
    from mvcap.calibrate import CalibrateConfig, calibrate, iter_frames

    a = _images(tmp_path / "cam0", range(1, 9))
    b = _images(tmp_path / "cam1", [k for k in range(1, 9) if k != 4])
    assert [(i, int(img[0, 0])) for i, img in iter_frames(b)] == [
        (0, 1),
        (1, 2),
        (2, 3),
        (4, 5),
        (5, 6),
        (6, 7),
        (7, 8),
    ]
    with pytest.raises(CalibrationError, match=r"camera 'cam1': no image for frame 3 .*allow_gaps"):
        calibrate([a, b], CalibrateConfig(board="charuco_5x7"), progress=False)
    # with gaps allowed it gets past the sources (and fails later: there is no board in these images)
    with pytest.raises(CalibrationError) as e:
        calibrate([a, b], CalibrateConfig(board="charuco_5x7", allow_gaps=True), progress=False)
    assert "no image for frame" not in str(e.value)


def test_module_has_no_other_reader(tmp_path):
    """ingest and calibrate keep no private copy of the source helpers."""
    for mod in (mvcap.ingest, mvcap.calibrate):
        for name in ("_natural_key", "_image_files", "_images_in", "_discover", "_probe_video", "_Reader"):
            assert not hasattr(mod, name), (mod.__name__, name)
    assert sources.natural_key("img10") > sources.natural_key("img9")
