"""`mvcap batch`: refinement pooled on Ray workers gives what a sequential run gives, resumes,
and says how to install Ray when it is missing."""

import dataclasses
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mvcap.batch import RAY_MISSING, BatchConfig, BatchError, RefineJob, import_ray, plan_chunks, refine_batch
from mvcap.capture import Session
from mvcap.cli import main
from mvcap.fit import FitConfig
from mvcap.pipeline import load_run_config
from mvcap.refine import RefineConfig, needs_previous, refine_session

# flow predictor, one round, a short fit: a tiny session's frame takes a fraction of a second
FAST = RefineConfig(predictor="flow", outer_iterations=1, fit=FitConfig(iterations=8))
# frames that depend on the previous frame's result: init from it and a temporal term
SEQ = dataclasses.replace(FAST, init="previous", fit=FitConfig(iterations=8, w_temporal=1e-3))


def _copy(src, dst):
    shutil.copy(src, dst)
    return dst


def _same(a, b, frames):
    """Two results runs hold the same refined frames: the same code on the same inputs, up to
    float32 rounding (a Ray worker's process may round a batched fit's sums differently; on
    some machines ~2e-7 rad and ~2e-6 m; a wrong chunk or a wrong previous frame is far more)."""
    assert a.done[frames].all() and b.done[frames].all()
    for name, atol in (("pose_rotvecs", 1e-4), ("transl", 1e-5), ("residual_px", 1e-2)):
        np.testing.assert_allclose(getattr(a, name)[frames], getattr(b, name)[frames], rtol=0, atol=atol, err_msg=name)
    np.testing.assert_array_equal(a.iterations[frames], b.iterations[frames])


def test_missing_ray_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BatchError, match=r"pip install 'mvcap\[batch\]'"):
        import_ray()
    cfg = tmp_path / "run.toml"
    cfg.write_text("")
    out = CliRunner().invoke(main, ["batch", str(cfg)])
    assert out.exit_code == 2
    assert out.output.strip() == f"error: {RAY_MISSING}"


def test_chunks_and_which_configs_must_run_in_order():
    assert plan_chunks([0, 1, 2, 5, 6], 2) == [[0, 1], [2, 5], [6]]
    assert plan_chunks([3], 4) == [[3]] and plan_chunks([], 3) == []
    assert not needs_previous(FAST) and needs_previous(SEQ)
    assert needs_previous(dataclasses.replace(FAST, init="previous"))
    assert needs_previous(dataclasses.replace(FAST, fit=FitConfig(w_temporal=0.1)))
    with pytest.raises(BatchError, match="chunk_frames"):
        BatchConfig(chunk_frames=0)
    with pytest.raises(BatchError, match="workers"):
        BatchConfig(workers=-1)


def _take(folder, session, refine: str):
    """A run folder with a copy of ``session`` and a run config refining it with ``refine``."""
    folder.mkdir()
    _copy(session, folder / "session.h5")
    (folder / "run.toml").write_text(
        'name = "main"\n[subject]\nname = "subject00"\n[init]\nsource = "session"\n'
        "[validate]\nenabled = false\n[report]\nenabled = false\n"
        f"[refine]\n{refine}\n"
    )
    return folder / "run.toml"


def test_two_local_workers_match_sequential_runs_and_resume(tiny_session_path, detected_session_path, body_model,
                                                            tmp_path):  # fmt: skip
    """One embedded Ray (2 CPUs, started and shut down by the command): two takes, one with
    independent frames and an interrupted run to resume, one whose frames depend on the
    previous result; each must equal a sequential run."""
    pytest.importorskip("ray")
    fast = 'predictor = "flow"\nouter_iterations = 1\n[refine.fit]\niterations = 8'
    ind = _take(tmp_path / "take1", tiny_session_path, fast)
    dep = _take(tmp_path / "take2", detected_session_path, f'init = "previous"\n{fast}\nw_temporal = 1e-3')
    cfg_ind, cfg_dep = load_run_config(ind)[0].refine, load_run_config(dep)[0].refine
    assert not needs_previous(cfg_ind) and needs_previous(cfg_dep)
    # the sequential references, on copies; the independent take's frames as the batch gets
    # them: frame 1 first (the interrupted run), then 0 and 2 refined together (frame_batch)
    assert cfg_ind.frame_batch > 1
    r1 = _copy(tiny_session_path, tmp_path / "r1.h5")
    refine_session(r1, "x", cfg_ind, frames=[1], model=body_model, progress=False)
    ref_ind = refine_session(r1, "x", cfg_ind, model=body_model, progress=False)
    ref_dep = refine_session(_copy(detected_session_path, tmp_path / "r2.h5"), "x", cfg_dep, model=body_model,
                             progress=False)  # fmt: skip
    partial = refine_session(ind.parent / "session.h5", "main", cfg_ind, frames=[1], model=body_model,
                             progress=False)  # fmt: skip  # an interrupted run: frame 1 done

    out = CliRunner().invoke(main, ["batch", str(ind), str(dep), "--workers", "2", "--chunk-frames", "2"])
    assert out.exit_code == 0, out.output
    assert out.output.count("3 / 3 frames refined") == 2
    with Session.open(ind.parent / "session.h5") as s:
        got_ind = s.read_results("main")
    with Session.open(dep.parent / "session.h5") as s:
        got_dep = s.read_results("main")
    assert got_ind.seconds[1] == partial.seconds[1]  # resumed: frame 1 was not computed again
    _same(got_ind, ref_ind, [0, 1, 2])
    _same(got_dep, ref_dep, [0, 1, 2])  # ran in order, each frame from the previous result
    for take in ("take1", "take2"):
        assert json.loads((tmp_path / take / "summary_main.json").read_text())["frames_done"] == 3


def test_one_writer_per_results_run(tiny_session_path, tmp_path):
    pytest.importorskip("ray")
    cfg = _take(tmp_path / "take", tiny_session_path, 'predictor = "flow"')
    out = CliRunner().invoke(main, ["batch", str(cfg), str(cfg)])
    assert out.exit_code == 2 and "one writer" in out.output
    with pytest.raises(BatchError, match="one writer"):
        refine_batch([RefineJob(tmp_path / "take" / "session.h5", "a")] * 2)
