"""`mvcap run` end to end on a tiny synthetic capture written out as videos (the demo chain)."""

import json

import pytest
from click.testing import CliRunner

from mvcap.cli import main
from mvcap.pipeline import RunError, load_run_config, run_pipeline


def _demo(tmp_path, monkeypatch, mediapipe: bool):
    import mvcap.detect

    if not mediapipe:
        monkeypatch.setattr(mvcap.detect, "mediapipe_available", lambda: False)
    elif not mvcap.detect.mediapipe_available():
        pytest.skip("MediaPipe (the detect extra) is not installed")
    out = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--frames", "2", "--size", "160"])
    assert out.exit_code == 0, out.output
    return out.output


def test_demo_chain_without_mediapipe_then_resume(tmp_path, monkeypatch):
    text = _demo(tmp_path, monkeypatch, mediapipe=False)
    assert "MediaPipe is not installed" in text and "2 / 2 frames refined" in text
    summary = json.loads((tmp_path / "summary_demo.json").read_text())
    assert summary["frames_done"] == 2 and summary["failures"] == []
    assert "init.npz" in summary["stage_notes"]["init"] and "prescan" in summary["stage_notes"]["subject"]
    for name in ("report_demo.html", "export/demo.npz", "export/demo.bvh", "export/demo.glb"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "Accuracy against ground truth" in (tmp_path / "report_demo.html").read_text()
    assert "no 2D detections" in summary["stage_notes"]["validate"] and summary["validation"] is None
    # rerun: everything is found done, nothing is computed again
    cfg, base = load_run_config(tmp_path / "run.toml")
    again = run_pipeline(cfg, base, progress=False)
    assert again.frames_done == 2 and "not ingested again" in again.stage_notes["ingest"]
    assert again.stage_seconds["refine"] < 5


def test_demo_chain_with_mediapipe(tmp_path, monkeypatch):
    _demo(tmp_path, monkeypatch, mediapipe=True)
    summary = json.loads((tmp_path / "summary_demo.json").read_text())
    assert summary["frames_done"] == 2
    assert "MediaPipe found the person" in summary["stage_notes"]["init"]
    assert "registered demo_subject" in summary["stage_notes"]["subject"]
    assert (tmp_path / "demo_subject.npz").exists()
    # the validate stage: every camera left out once, a verdict each, in the summary and the report
    cams = summary["validation"]["cameras"]
    assert [c["view"] for c in cams] == ["cam00", "cam01", "cam02", "cam03"]
    assert all(c["verdict"] in ("improved", "unchanged", "worse") and c["frames"] == 1 for c in cams)
    assert "Cross-validation without ground truth" in (tmp_path / "report_demo.html").read_text()


def test_run_config_errors(tmp_path, tiny_session):
    with pytest.raises(RunError, match="init.source"):
        load_run_config(_toml(tmp_path, '[init]\nsource = "magic"'))
    cfg, base = load_run_config(_toml(tmp_path, '[capture]\nvideos = "vids"'))
    with pytest.raises(RunError, match="needs capture.rig"):
        run_pipeline(cfg, base, progress=False)
    cfg, base = load_run_config(_toml(tmp_path, ""))
    with pytest.raises(RunError, match="does not exist and capture.videos is empty"):
        run_pipeline(cfg, base, progress=False)
    cfg, base = load_run_config(_toml(tmp_path, f'frames = "0:99"\n[capture]\nsession = "{tiny_session}"'))
    with pytest.raises(RunError, match=r"frames '0:99' asks for frame\(s\) 3:99 but the session has 3 frames"):
        run_pipeline(cfg, base, progress=False)


def _toml(tmp_path, body: str):
    p = tmp_path / "run.toml"
    p.write_text(body + "\n")
    return p


def test_readme_chain_command_by_command(tmp_path):
    """The README's step-by-step chain on a synthetic capture written out as MP4 videos."""
    import mvcap.detect
    from mvcap.config import CONFIG_DIR
    from mvcap.demo import write_synthetic_capture

    cap = write_synthetic_capture(
        tmp_path / "capture", CONFIG_DIR / "demo" / "scene.toml", ["frames_per_subject=2", "rig.image_size=[160,160]"],
        progress=False,
    )  # fmt: skip
    runner = CliRunner()

    def ok(*args):
        out = runner.invoke(main, [str(a) for a in args])
        assert out.exit_code == 0, f"mvcap {' '.join(map(str, args))}:\n{out.output}"
        return out.output

    take = tmp_path / "take1.h5"
    ok("ingest", cap, "--rig", cap / "rig.toml", "--out", take)
    if mvcap.detect.mediapipe_available():
        ok("detect", take)
        ok("init", take)
        ok("register", take, "--out", tmp_path / "alice.npz", "--name", "alice")
        subject = tmp_path / "alice.npz"
    else:
        ok("init", take, "--from-npz", cap / "init.npz")
        subject = cap / "prescan_subject.npz"
    text = ok("refine", take, "--subject", subject, "--predictor", "learned")
    assert "2/2 frames done" in text
    ok("export", take, "--run", "learned-joint", "--out", tmp_path / "exp", "--formats", "npz,bvh")
    ok("report", take, "--out", tmp_path / "r.html")  # as in the README: the session's only run
    ok("overlay", take, "--out", tmp_path / "ov")
    assert (tmp_path / "exp" / "learned-joint.bvh").exists() and (tmp_path / "r.html").stat().st_size > 10_000
    # bad input: exporting a run that does not exist is one clear line, not a traceback
    out = runner.invoke(main, ["export", str(take), "--run", "nope", "--out", str(tmp_path / "x")])
    assert out.exit_code == 2 and "nope" in out.output and "Traceback" not in out.output
