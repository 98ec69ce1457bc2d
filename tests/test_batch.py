"""`mvcap batch`: refinement pooled on Ray workers gives what a sequential run gives, resumes,
and says how to install Ray when it is missing."""

import dataclasses
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mvcap.batch import RAY_MISSING, BatchConfig, BatchError, RefineJob, import_ray, plan_chunks, refine_batch
from mvcap.capture import Session
from mvcap.cli import main
from mvcap.fit import FitConfig
from mvcap.refine import RefineConfig, needs_previous, refine_session

# flow predictor, one round, a short fit: a tiny session's frame takes a fraction of a second
FAST = RefineConfig(predictor="flow", outer_iterations=1, fit=FitConfig(iterations=8))
# frames that depend on the previous frame's result: init from it and a temporal term
SEQ = dataclasses.replace(FAST, init="previous", fit=FitConfig(iterations=8, w_temporal=1e-3))


def _copy(src, dst):
    shutil.copy(src, dst)
    return dst


def _same(a, b, frames):
    """Two results runs hold the same refined frames (bit for bit, up to float noise)."""
    assert a.done[frames].all() and b.done[frames].all()
    for name in ("pose_rotvecs", "transl", "residual_px"):
        np.testing.assert_allclose(getattr(a, name)[frames], getattr(b, name)[frames], rtol=0, atol=1e-6,
                                   err_msg=name)  # fmt: skip
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


def test_two_local_workers_match_a_sequential_run_and_resume(tiny_session_path, detected_session_path, body_model,
                                                             tmp_path):  # fmt: skip
    pytest.importorskip("ray")
    ref = _copy(tiny_session_path, tmp_path / "ref.h5")
    ref_det = _copy(detected_session_path, tmp_path / "ref_det.h5")
    seq_ind = refine_session(ref, "ind", FAST, model=body_model, progress=False)
    seq_dep = refine_session(ref_det, "dep", SEQ, model=body_model, progress=False)

    a = _copy(tiny_session_path, tmp_path / "a.h5")
    b = _copy(detected_session_path, tmp_path / "b.h5")
    partial = refine_session(a, "ind", FAST, frames=[1], model=body_model, progress=False)  # an interrupted run
    jobs = [RefineJob(a, "ind", FAST), RefineJob(b, "dep", SEQ), RefineJob(b, "ind2", FAST, frames=(0, 2))]
    out = refine_batch(jobs, BatchConfig(workers=2), body_model, progress=False)

    ind, dep, ind2 = out
    # resumed: frame 1 was done before and is not computed again
    assert (ind.frames_total, ind.frames_skipped, ind.frames_done, ind.failures) == (3, 1, 2, [])
    assert ind.results.seconds[1] == partial.seconds[1]
    _same(ind.results, seq_ind, [0, 1, 2])
    # the frames that depend on the previous result ran in order and match the sequential run
    assert dep.sequential and not ind.sequential and dep.frames_done == 3
    _same(dep.results, seq_dep, [0, 1, 2])
    assert ind2.frames_done == 2 and ind2.results.done.tolist() == [True, False, True]
    with Session.open(b) as s:
        assert set(s.result_names()) == {"dep", "ind2"}


def test_batch_command_runs_many_configs(tiny_session_path, tmp_path):
    pytest.importorskip("ray")
    configs = []
    for name in ("take1", "take2"):
        folder = tmp_path / name
        folder.mkdir()
        _copy(tiny_session_path, folder / "session.h5")
        (folder / "run.toml").write_text(
            'name = "main"\n[init]\nsource = "session"\n[validate]\nenabled = false\n[report]\nenabled = false\n'
            '[refine]\npredictor = "flow"\nouter_iterations = 1\n[refine.fit]\niterations = 8\n'
        )
        configs.append(str(folder / "run.toml"))
    out = CliRunner().invoke(main, ["batch", *configs, "--workers", "2", "--chunk-frames", "2"])
    assert out.exit_code == 0, out.output
    assert out.output.count("3 / 3 frames refined") == 2
    for name in ("take1", "take2"):
        assert (tmp_path / name / "summary_main.json").exists()
        with Session.open(tmp_path / name / "session.h5") as s:
            assert s.read_results("main").done.all()
    # the same run of the same session twice: two writers, refused
    out = CliRunner().invoke(main, ["batch", configs[0], configs[0]])
    assert out.exit_code == 2 and "one writer" in out.output
