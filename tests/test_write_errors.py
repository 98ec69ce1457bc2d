"""Write errors are errors: a full disk (simulated, and a real 2 MB tmpfs where we may mount
one) makes the command fail with one clear line, and everything written before stays readable."""

import errno
import subprocess
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mvcap.capture import BodyParams, Session, SessionError
from mvcap.cli import main
from mvcap.ingest import export_frames
from mvcap.synth import RigConfig, make_ring_rig

T, W, H = 8, 64, 48
FULL = "the disk is full"


def _noise_frames(rng, n=T, w=W, h=H, views=2) -> np.ndarray:
    """(n, V, h, w, 3) uint8 noise: incompressible, so each frame costs its full size on disk."""
    return rng.integers(0, 256, size=(n, views, h, w, 3), dtype=np.uint8)


def _png_source(tmp_path, frames) -> Path:
    """Image folders (lossless PNG) + rig.toml of ``frames`` in tmp_path/src."""
    rig = make_ring_rig(
        RigConfig(num_cameras=frames.shape[1], image_size=frames.shape[3:1:-1]), np.random.default_rng(0)
    )
    path = tmp_path / "orig.h5"
    with Session.create(path, rig, len(frames)) as s:
        for t, f in enumerate(frames):
            s.write_frame(t, f)
        s.mark_complete()
    return export_frames(path, tmp_path / "src", format="png", progress=False).rig_path.parent


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_images_from(monkeypatch, frame: int, how: str) -> None:
    """Make writing the images of frame >= ``frame`` fail like a full disk, the three ways
    h5py shows it: the write raises, the flush raises, or the error is only reported while a
    dataset handle is discarded (``Exception ignored in ... __dealloc__``)."""
    setitem, flush = h5py.Dataset.__setitem__, h5py.Dataset.flush
    state = {"last": -1}

    def is_late_images(ds, key=None):
        return ds.name.endswith("/images") and (key is None or (isinstance(key, int) and key >= frame))

    def patched_setitem(self, key, value):
        if is_late_images(self, key):
            state["last"] = key
            if how == "write":
                _enospc()
            if how == "swallowed":  # what h5py does when the data hits the disk in __dealloc__
                import sys

                exc = RuntimeError("Can't decrement id ref count (file write failed: errno = 28, error message = ...)")
                sys.unraisablehook(types.SimpleNamespace(exc_value=exc, object="h5py._objects.ObjectID.__dealloc__"))
                return None
        return setitem(self, key, value)

    def patched_flush(self):
        if how == "flush" and self.name.endswith("/images") and state["last"] >= frame:
            _enospc()
        return flush(self)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", patched_setitem)
    monkeypatch.setattr(h5py.Dataset, "flush", patched_flush)


@pytest.mark.parametrize("how", ["write", "flush", "swallowed"])
def test_ingest_full_disk_fails_clearly_and_resumes(tmp_path, monkeypatch, how):
    frames = _noise_frames(np.random.default_rng(1))
    src = _png_source(tmp_path, frames)
    out = tmp_path / "take.h5"
    with monkeypatch.context() as m:
        _fail_images_from(m, 3, how)
        res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(out)])
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]  # after the progress bar
    assert msg.startswith("error: ingest stopped at frame 3: cannot write frame 3") and FULL in msg, msg
    assert "3 frame(s) written so far are kept" in msg and "rerun the same command to resume" in msg
    assert "Traceback" not in res.output
    assert not out.exists()
    partial = out.with_name(out.name + ".partial")
    with Session.open(partial) as s:  # still opens; the frames before the failure are intact
        assert s.frames_written.tolist() == [True] * 3 + [False] * (T - 3) and not s.complete
        assert np.array_equal(np.stack([s.read_frame(t) for t in range(3)]), frames[:3])
    res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(out)])  # disk freed: resume
    assert res.exit_code == 0, res.output
    with Session.open(out) as s:
        assert s.complete and np.array_equal(np.stack([s.read_frame(t) for t in range(T)]), frames)


def _session_with_everything(path, rng):
    rig = make_ring_rig(RigConfig(num_cameras=2, image_size=(W, H)), np.random.default_rng(0))
    frames = _noise_frames(rng)
    p = BodyParams(rng.normal(size=(T, 24, 3)) * 0.1, rng.normal(size=(T, 10)), rng.normal(size=(T, 3)))
    with Session.create(path, rig, T) as s:
        for t in range(T):
            s.write_frame(t, frames[t])
        s.write_init(p)
        s.write_ground_truth(p, visibility=rng.random((T, 2, 5)) > 0.5)
    return frames, p


def _check_intact(path, frames, p):
    with Session.open(path) as s:
        assert np.array_equal(np.stack([s.read_frame(t) for t in range(T)]), frames)
        assert s.read_init().allclose(p) and s.read_ground_truth().allclose(p)


def test_results_write_error_keeps_session_and_earlier_results(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    frames, p = _session_with_everything(path, np.random.default_rng(2))
    with Session.open(path, "a") as s:
        w = s.results_run("run", config={"a": 1})
        for t in range(2):
            w.write(t, p.pose_rotvecs[t], p.betas[t], p.transl[t])
        with monkeypatch.context() as m:
            m.setattr(h5py.Dataset, "__setitem__", lambda *a: _enospc())
            with pytest.raises(SessionError, match=f"cannot write results of frame 2 \\(run 'run'\\).*{FULL}"):
                w.write(2, p.pose_rotvecs[2], p.betas[2], p.transl[2])
        assert (tmp_path / "s.h5.results" / "run.h5").is_file()
    _check_intact(path, frames, p)  # results never go into the session file itself
    with Session.open(path, "a") as s:
        r = s.read_results("run")
        assert r.done.tolist() == [True, True] + [False] * (T - 2)
        assert np.allclose(r.transl[:2], p.transl[:2])
        w = s.results_run("run", config={"a": 1})  # resumes where it failed
        assert w.next_frame() == 2
        w.write(2, p.pose_rotvecs[2], p.betas[2], p.transl[2])
        assert s.read_results("run").done.sum() == 3


def test_refine_command_full_disk(tiny_session, monkeypatch):
    """`mvcap refine` on a full disk: one line naming the results file, the done frames kept."""
    args = ["refine", str(tiny_session), "--predictor", "oracle", "--frames", "0:2"]
    args += ["--set", "outer_iterations=1", "--set", "fit.iterations=5"]
    setitem = h5py.Dataset.__setitem__

    def fail_second_frame(self, key, value):
        if self.file.filename.endswith(".results/oracle-joint.h5") and key == 1:
            _enospc()
        return setitem(self, key, value)

    with monkeypatch.context() as m:
        m.setattr(h5py.Dataset, "__setitem__", fail_second_frame)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: cannot write results of frame 1 (run 'oracle-joint')") and FULL in line, line
    with Session.open(tiny_session) as s:
        assert s.read_results("oracle-joint").done.tolist()[:2] == [True, False]
        assert s.read_frame(0).shape[0] == s.num_views and s.has_ground_truth


# ------------------------------------------------------------------------------ real tmpfs
@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root and mount permission; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def test_ingest_into_full_tmpfs(tmp_path, tiny_disk):
    frames = _noise_frames(np.random.default_rng(3), n=30, w=160, h=120)  # 30 x 115 kB > 2 MB
    src = _png_source(tmp_path, frames)
    out = tiny_disk / "take.h5"
    res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(out)])
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]
    assert msg.startswith("error: ingest stopped at frame") and FULL in msg and "rerun" in msg, msg
    with Session.open(out.with_name("take.h5.partial")) as s:
        k = int(s.frames_written.sum())
        assert 0 < k < 30 and s.frames_written[:k].all()
        assert np.array_equal(np.stack([s.read_frame(t) for t in range(k)]), frames[:k])


def test_results_on_full_tmpfs(tmp_path, tiny_disk):
    path = tiny_disk / "s.h5"
    frames, p = _session_with_everything(path, np.random.default_rng(4))
    with Session.open(path, "a") as s:
        w = s.results_run("first")
        for t in range(T):
            w.write(t, p.pose_rotvecs[t], p.betas[t], p.transl[t])
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte
        with pytest.raises(OSError) as info:
            while True:
                f.write(b"\0" * 4096)
    assert info.value.errno == errno.ENOSPC
    with Session.open(path, "a") as s:
        with pytest.raises(SessionError, match=f"results run 'second'.*{FULL}"):
            s.results_run("second")
        with pytest.raises(SessionError, match=f"cannot write frame 0 .*{FULL}"):
            s.write_frame(0, frames[0])
        assert s.result_names() == ["first"]
    _check_intact(path, frames, p)
    with Session.open(path) as s:
        assert s.read_results("first").params.allclose(p) and s.read_results("first").done.all()
    filler.unlink()
    with Session.open(path, "a") as s:  # space again: the run starts normally
        s.results_run("second").write(0, p.pose_rotvecs[0], p.betas[0], p.transl[0])
        assert s.result_names() == ["first", "second"]


RACE_SCRIPT = """
import sys
import numpy as np
import mvcap.capture as capture
from mvcap.capture import Session, SessionError

capture._FREE_SPACE_MARGIN = -(10**12)  # skip the free-space check: HDF5 itself hits the full disk
rng = np.random.default_rng(5)
with Session.open(sys.argv[1], "a") as s:
    for t in range(s.num_frames):
        try:
            s.write_frame(t, rng.integers(0, 256, (s.num_views, 120, 160, 3), dtype=np.uint8))
        except SessionError as exc:
            print(f"failed at {t}: {exc}")
            break
"""


def test_hdf5_itself_hits_full_tmpfs(tmp_path, tiny_disk):
    """When the disk fills between the free-space check and the write (another process), HDF5's
    own error is reported, the process exits normally and the frames before stay readable."""
    import sys

    rig = make_ring_rig(RigConfig(num_cameras=2, image_size=(160, 120)), np.random.default_rng(0))
    path = tiny_disk / "s.h5"
    Session.create(path, rig, 40).close()
    script = tmp_path / "race.py"
    script.write_text(RACE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # no crash when the failed file is closed
    assert "failed at" in proc.stdout and f"{FULL} (No space left on device)" in proc.stdout, proc.stdout
    k = int(proc.stdout.split("failed at ")[1].split(":")[0])
    rng = np.random.default_rng(5)
    expected = [rng.integers(0, 256, (2, 120, 160, 3), dtype=np.uint8) for _ in range(k)]
    with Session.open(path) as s:
        assert s.frames_written.tolist() == [True] * k + [False] * (40 - k) and k > 0
        assert all(np.array_equal(s.read_frame(t), expected[t]) for t in range(k))
