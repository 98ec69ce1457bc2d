import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from mvcap.body import BodyParams
from mvcap.cameras import Camera, Rig
from mvcap.capture import FORMAT_VERSION, Session, SessionError
from mvcap.subject import Subject

T, V, H, W = 6, 2, 12, 16
REPO = Path(__file__).resolve().parents[1]


def small_rig(size=(W, H)):
    cams = []
    for i in range(V):
        K = np.array([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]])
        angle = 0.3 * i
        R = np.array(
            [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        )
        cams.append(Camera(f"cam{i}", K, np.zeros(5), R, np.array([0.0, 0.0, 3.0 + i]), size))
    return Rig(tuple(cams))


def random_params(rng, n=T):
    return BodyParams(
        rng.normal(size=(n, 24, 3)).astype(np.float32) * 0.2,
        rng.normal(size=(n, 10)).astype(np.float32),
        rng.normal(size=(n, 3)).astype(np.float32),
    )


def frames(rng):
    return rng.integers(0, 256, size=(T, V, H, W, 3), dtype=np.uint8)


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.h5"
    rig = small_rig()
    imgs = frames(rng)
    init = random_params(rng)
    gt = random_params(rng)
    vis = rng.random((T, V, 7)) > 0.5
    subj = Subject(
        "alice",
        rng.normal(size=10),
        texture=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        vertex_colors=rng.integers(0, 256, (5, 3), dtype=np.uint8),
        gender="female",
        meta={"k": 1},
    )
    with Session.create(path, rig, T, fps=25.0, provenance={"source": "test"}) as s:
        for t in range(T):
            s.write_frame(t, imgs[t], timestamp=0.5 + t)
        s.write_init(init.pose_rotvecs, init.betas, init.transl)
        s.write_ground_truth(gt, visibility=vis, tags=np.array(["a", "b"]))
        s.write_subject(subj)
        assert not s.complete
        s.mark_complete()

    with Session.open(path) as s:
        assert (
            s.complete and s.num_frames == T and s.fps == 25.0 and s.view_names == ("cam0", "cam1")
        )
        assert s.image_size == (W, H)
        assert s.provenance == {"source": "test"}
        assert s.attrs["format"] == "mvcap-session" and s.attrs["format_version"] == FORMAT_VERSION
        for a, b in zip(s.rig, rig, strict=True):
            assert (
                a.name == b.name
                and np.array_equal(a.K, b.K)
                and np.array_equal(a.R_world2cam, b.R_world2cam)
            )
            assert np.array_equal(a.t_world2cam, b.t_world2cam) and a.image_size == b.image_size
        for t in range(T):
            assert np.array_equal(s.read_frame(t), imgs[t])
        assert np.array_equal(s.read_frame(2, views=["cam1"]), imgs[2, [1]])
        assert np.array_equal(s.read_view("cam1"), imgs[:, 1])
        assert np.array_equal(s.read_view(0, frames=[4, 1, 1]), imgs[[4, 1, 1], 0])
        assert np.array_equal(s.timestamps("cam0"), 0.5 + np.arange(T))
        assert s.frames_written.all()
        assert s.read_init().allclose(init, atol=0)
        assert s.read_init(frames=slice(2, 4)).allclose(init.slice(slice(2, 4)), atol=0)
        assert s.has_ground_truth and s.read_ground_truth().allclose(gt, atol=0)
        extras = s.read_ground_truth_extras()
        assert np.array_equal(extras["visibility"], vis) and list(extras["tags"]) == ["a", "b"]
        assert s.subject == subj and np.array_equal(s.subject_betas, subj.betas.astype(np.float32))
        with pytest.raises(SessionError, match="read-only"):
            s.write_frame(0, imgs[0])


def test_view_frames_and_missing_frames(tmp_path):
    rng = np.random.default_rng(1)
    imgs = frames(rng)
    with Session.create(tmp_path / "s.h5", small_rig(), T) as s:
        s.write_view_frames("cam0", 0, imgs[:, 0])
        s.write_view_frames("cam1", 0, imgs[:3, 1])
        assert s.frames_written.tolist() == [True] * 3 + [False] * 3
        assert s.subject is None and s.subject_betas is None
        assert np.array_equal(s.read_view("cam0"), imgs[:, 0])
        with pytest.raises(SessionError, match="never written"):
            s.read_frame(4)
        with pytest.raises(SessionError, match="not written"):
            s.mark_complete()
        with pytest.raises(SessionError, match=r"shape"):
            s.write_frame(0, imgs[0, :, :-1])
        with pytest.raises(SessionError, match="uint8"):
            s.write_frame(0, imgs[0].astype(np.float32))
        with pytest.raises(SessionError, match="out of range"):
            s.write_frame(T, imgs[0])
        with pytest.raises(SessionError, match="no initial estimate"):
            s.read_init()
        s.write_init(
            *(getattr(random_params(rng, 2), k) for k in ("pose_rotvecs", "betas", "transl")),
            frames=[3, 1],
        )
        assert s.init_valid.tolist() == [False, True, False, True, False, False]
        assert np.isnan(s.read_init(require_valid=False).transl[0]).all()


def test_results_resume_and_config(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "s.h5"
    p = random_params(rng)
    with Session.create(path, small_rig(), T) as s:
        w = s.results_run("refine", config={"iters": 3, "views": ["cam0", "cam1"]})
        for t in range(3):
            w.write(
                t,
                p.pose_rotvecs[t],
                p.betas[t],
                p.transl[t],
                residual_px=[1.0, 2.0],
                iterations=3,
                seconds=0.1,
            )
    with Session.open(path, "a") as s:
        assert s.result_names() == ["refine"]
        with pytest.raises(SessionError, match="different config"):
            s.results_run("refine", config={"iters": 4, "views": ["cam0", "cam1"]})
        with pytest.raises(SessionError, match="different config"):  # a setting the run had is gone
            s.results_run("refine", config={"views": ["cam0", "cam1"]})
        # a setting added to mvcap after the run started is not a difference
        s.results_run("refine", config={"iters": 3, "views": ["cam0", "cam1"], "new_setting": 1})
        w = s.results_run("refine", config={"iters": 3, "views": ("cam0", "cam1")})  # same as JSON
        assert w.done_frames().tolist() == [True] * 3 + [False] * 3 and w.next_frame() == 3
        for t in range(3, T):
            w.write(t, p.pose_rotvecs[t], p.betas[t], p.transl[t])
        r = s.read_results("refine")
        assert r.done.all() and r.params.allclose(p, atol=0) and r.config["iters"] == 3
        assert np.allclose(r.residual_px[:3], [1.0, 2.0]) and np.isnan(r.residual_px[3:]).all()
        assert r.iterations.tolist() == [3, 3, 3, 0, 0, 0] and r.view_names == ("cam0", "cam1")
        w2 = s.results_run("refine", config={"iters": 4}, overwrite=True)
        assert not w2.done_frames().any() and w2.config == {"iters": 4}
        with pytest.raises(SessionError, match="no results run"):
            s.results_run("other", create=False)
        with pytest.raises(SessionError, match="no results run"):
            s.read_results("other")


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    from mvcap.capture import Session
    k = int(sys.argv[2])
    s = Session.open(sys.argv[1], "a")
    w = s.results_run("crashy", config={{"a": 1}})
    for t in range(k + 1):
        w.write(t, np.full((24, 3), t, np.float32), np.zeros(10), np.ones(3) * t)
    # start writing frame k+1 but die before it is marked done, without closing the file
    g = s._results_group("crashy", write=True)
    g["pose_rotvecs"][k + 1] = 99.0
    g.file.flush()
    os._exit(3)
    """
)


def test_resume_after_crash(tmp_path):
    path = tmp_path / "s.h5"
    with Session.create(path, small_rig(), T):
        pass
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT.format(repo=str(REPO)))
    k = 2
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(k)], capture_output=True, text=True
    )
    assert proc.returncode == 3, proc.stderr
    with Session.open(path, "a") as s:
        assert not s.complete
        w = s.results_run("crashy", config={"a": 1})
        assert w.done_frames().tolist() == [t <= k for t in range(T)]
        r = s.read_results("crashy")
        assert np.array_equal(r.transl[: k + 1, 0], np.arange(k + 1))
        w.write(k + 1, np.zeros((24, 3)), np.zeros(10), np.zeros(3))  # resumes fine
        assert w.next_frame() == k + 2


def test_truncated_file(tmp_path):
    path = tmp_path / "s.h5"
    rng = np.random.default_rng(3)
    with Session.create(path, small_rig(), T, compression=None) as s:
        for t, im in enumerate(frames(rng)):
            s.write_frame(t, im)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SessionError, match="truncated") as info:
        with Session.open(path) as s:
            s.read_view("cam1")
    assert "another process" not in str(info.value) and str(path) in str(info.value)


def test_not_hdf5_and_missing(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(SessionError, match="not an HDF5 file|not a valid HDF5"):
        Session.open(bad)
    with pytest.raises(SessionError, match="does not exist"):
        Session.open(tmp_path / "nope.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(SessionError, match="not an mvcap session"):
        Session.open(other)


def test_newer_version_rejected(tmp_path):
    path = tmp_path / "s.h5"
    with Session.create(path, small_rig(), T):
        pass
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(SessionError, match=rf"format version {FORMAT_VERSION + 1}.*upgrade mvcap"):
        Session.open(path)


def test_overwrite_refusal(tmp_path):
    path = tmp_path / "s.h5"
    Session.create(path, small_rig(), T).close()
    with pytest.raises(SessionError, match="already exists.*overwrite=True"):
        Session.create(path, small_rig(), T)
    with Session.create(path, small_rig(), 3, overwrite=True) as s:
        assert s.num_frames == 3


def test_image_size_rescales_rig(tmp_path):
    rig = small_rig(size=(2 * W, 2 * H))
    with Session.create(tmp_path / "s.h5", rig, 2, image_size=(W, H)) as s:
        assert s.image_size == (W, H)
        assert np.allclose(s.rig["cam0"].K[0, 0], rig["cam0"].K[0, 0] / 2)
        s.write_frame(0, np.zeros((V, H, W, 3), np.uint8))


def test_body_params_helpers():
    rng = np.random.default_rng(4)
    p = random_params(rng, 4)
    assert len(p[1:3]) == 2 and len(p[2]) == 1
    t = p.to_torch()
    assert t["pose_rotvecs"].shape == (4, 24, 3) and t["betas"].shape == (4, 10)
    b = BodyParams(p.pose_rotvecs, p.betas[0], p.transl)  # shared betas broadcast
    assert b.betas.shape == (4, 10)
    with pytest.raises(ValueError, match=r"\(T, 24, 3\)"):
        BodyParams(p.pose_rotvecs[0], p.betas, p.transl)


def test_detections_round_trip(tmp_path):
    rig = small_rig()
    (w, h) = rig[0].image_size
    with Session.create(tmp_path / "d.h5", rig, num_frames=3) as s:
        assert not s.has_detections and s.read_masks(0) is None
        kp = np.random.default_rng(0).random((V, 33, 3)).astype(np.float32)
        masks = np.zeros((V, h, w), bool)
        masks[:, 2:5, 3:7] = True
        s.write_detections(1, kp, masks)
        with pytest.raises(SessionError, match="keypoints"):
            s.write_detections(2, kp[:, :10], keypoint_format="coco_17")
        with pytest.raises(SessionError, match="shape"):
            s.write_detections(2, kp[:1])
    with Session.open(tmp_path / "d.h5") as s:
        assert s.keypoint_format == "mediapipe_pose_33"
        assert s.detections_written.tolist() == [False, True, False]
        got = s.read_keypoints()
        np.testing.assert_array_equal(got[1], kp)
        assert np.isnan(got[0]).all()
        np.testing.assert_array_equal(s.read_masks(1) > 0.5, masks)
        assert s.read_masks(0).sum() == 0


def test_version1_session_lzf_frames_and_in_file_results(tmp_path):
    """Version-1 files (LZF frames, runs under /results/<run>) are read, and continuing such a
    run moves it to a results file without touching the session file's other data."""
    rng = np.random.default_rng(7)
    path = tmp_path / "old.h5"
    imgs, p = frames(rng), random_params(rng)
    with Session.create(path, small_rig(), T, compression="lzf") as s:
        for t in range(T):
            s.write_frame(t, imgs[t])
    with h5py.File(path, "r+") as f:  # make it look like a file written by version 1
        f.attrs["format_version"] = 1
        del f.attrs["session_id"]
        g = f["results"].create_group("old")
        g.attrs["config"] = '{"a": 1}'
        g.create_dataset("view_names", data=np.array(["cam0", "cam1"], dtype=object), dtype=h5py.string_dtype())
        for k in ("pose_rotvecs", "betas", "transl"):
            g.create_dataset(k, data=np.concatenate([getattr(p, k)[:2], np.full_like(getattr(p, k)[2:], np.nan)]))
        g.create_dataset("done", data=np.arange(T) < 2)
        g.create_dataset("residual_px", data=np.full((T, V), np.nan, np.float32))
        g.create_dataset("iterations", data=np.zeros(T, np.int32))
        g.create_dataset("seconds", data=np.full(T, np.nan, np.float32))
        assert f["frames/cam0/images"].compression == "lzf"
    with Session.open(path) as s:
        assert np.array_equal(np.stack([s.read_frame(t) for t in range(T)]), imgs)
        assert s.result_names() == ["old"] and s.read_results("old").done.sum() == 2
    with Session.open(path, "a") as s:
        w = s.results_run("old", config={"a": 1})
        assert w.next_frame() == 2
        w.write(2, p.pose_rotvecs[2], p.betas[2], p.transl[2])
        assert (tmp_path / "old.h5.results" / "old.h5").is_file()
        r = s.read_results("old")
        assert r.done.tolist()[:3] == [True] * 3 and r.params.slice(slice(0, 3)).allclose(p.slice(slice(0, 3)))
        s.delete_results("old")
        assert s.result_names() == [] and not (tmp_path / "old.h5.results" / "old.h5").exists()
    with Session.open(path) as s:
        assert np.array_equal(s.read_frame(T - 1), imgs[T - 1])


def test_results_file_of_replaced_session_is_ignored(tmp_path):
    path = tmp_path / "s.h5"
    with Session.create(path, small_rig(), T) as s:
        s.results_run("r").write(0, np.zeros((24, 3)), np.zeros(10), np.zeros(3))
    stale = tmp_path / "s.h5.results" / "r.h5"
    keep = tmp_path / "keep.h5"
    stale.rename(keep)
    with Session.create(path, small_rig(), T, overwrite=True) as s:
        assert s.result_names() == []
    stale.parent.mkdir(exist_ok=True)
    keep.rename(stale)  # a results file left by the replaced session
    with Session.open(path, "a") as s:
        assert s.result_names() == []  # another session_id: not this session's run
        assert not s.results_run("r").done_frames().any()  # replaced by a fresh run
