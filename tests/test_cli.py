import shutil
import subprocess
import sys

import click
from click.testing import CliRunner

from mvcap.cli import main
from mvcap.demo import DEMO_RIG


def _commands(group: click.Group, prefix=()):
    """Every leaf command of the click tree: (path, command)."""
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_option_has_help_and_every_argument_is_described():
    """--help must explain every option; click arguments take no help, so the command's own text names them."""
    missing = []
    for path, cmd in _commands(main):
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"mvcap {' '.join(path)} {p.opts[0]}")
            if isinstance(p, click.Argument) and p.human_readable_name not in (cmd.help or ""):
                missing.append(f"mvcap {' '.join(path)} argument {p.human_readable_name}")
    assert not missing, f"options / arguments without help: {missing}"


def test_every_command_takes_quiet_verbose_and_one_overwrite_name():
    runner = CliRunner()
    for path, cmd in _commands(main):
        names = {p.name for p in cmd.params}
        assert {"quiet", "verbose"} <= names, path
        helptext = runner.invoke(main, [*path, "--help"]).output
        assert "--quiet" in helptext and "--verbose" in helptext, path
        for old in ("--restart", "--fresh"):
            assert old not in helptext, (path, old)  # deprecated spellings are hidden
    both = runner.invoke(main, ["rig", "show", str(DEMO_RIG), "--quiet", "--verbose"])
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_deprecated_spellings_still_work(tmp_path):
    """--restart (run, train-displacement) and --fresh (bench) still mean --overwrite, with a note."""
    runner = CliRunner()
    config = tmp_path / "train.toml"
    config.write_text("")
    out = runner.invoke(main, ["train-displacement", str(config), "--out", str(tmp_path / "r"), "--resume",
                               "--restart"])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "--restart is deprecated, use --overwrite" in out.output and "pass one of them" in out.output
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"")
    out = runner.invoke(main, ["train-displacement", str(config), "--out", str(tmp_path / "r")])
    assert out.exit_code == 2 and "--overwrite to start over" in out.output, out.output
    out = runner.invoke(main, ["bench", str(tmp_path / "none"), "--fresh"])
    assert "--fresh is deprecated" in out.output and "no such session" in out.output, out.output


def test_cli_import_is_light():
    """`mvcap --help` and the rig commands must not pay for torch / OpenCV / MediaPipe imports."""
    heavy = ("torch", "cv2", "mediapipe", "h5py", "scipy", "numba")
    code = "import sys, mvcap.cli, mvcap.rigio; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not [m for m in heavy if f"'{m}'" in loaded], loaded


def test_help_lists_commands():
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0
    for cmd in ("demo", "synth", "refine", "bench", "rig", "build-body", "batch", "validate"):
        assert cmd in out.output


def test_rig_show_and_bad_rig_message(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["rig", "show", str(DEMO_RIG)])
    assert ok.exit_code == 0 and "4 cameras" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[cam_0]\nname = "c0"\nsize = [10, 10]\n')
    out = runner.invoke(main, ["rig", "show", str(bad)])
    assert out.exit_code == 2 and "c0" in out.output and "missing field" in out.output


def test_demo_writes_pictures(tmp_path):
    out = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--rig-pictures"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "projection.png").stat().st_size > 10_000
    assert (tmp_path / "passes.png").stat().st_size > 10_000


def test_refine_missing_session_is_a_clear_error(tmp_path):
    out = CliRunner().invoke(main, ["refine", str(tmp_path / "nope.h5")])
    assert out.exit_code != 0 and "no such session" in out.output


def test_refine_then_export_and_export_errors(tiny_session, tmp_path):
    runner = CliRunner()
    none = runner.invoke(main, ["export", str(tiny_session), "--out", str(tmp_path / "x")])
    assert none.exit_code == 2 and "holds no results run yet" in none.output, none.output
    out = runner.invoke(
        main,
        [
            "refine",
            str(tiny_session),
            "--predictor",
            "oracle",
            "--frames",
            "0:2",
            "--set",
            "outer_iterations=1",
            "--set",
            "fit.iterations=5",
            "--verbose",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "2/3 frames done" in out.output
    assert "frame 1: " in out.output  # --verbose: one line per refined frame
    exp = runner.invoke(
        main,
        [
            "export",
            str(tiny_session),  # no --run: the session's only run
            "--out",
            str(tmp_path / "x"),
            "--formats",
            "npz,bvh,csv",
        ],
    )
    assert exp.exit_code == 0, exp.output
    assert (tmp_path / "x" / "oracle-joint.bvh").exists()
    runs = tiny_session.with_name(tiny_session.name + ".results")
    shutil.copy(runs / "oracle-joint.h5", runs / "second.h5")  # a second run of the same session
    two = runner.invoke(main, ["export", str(tiny_session), "--out", str(tmp_path / "w")])
    assert two.exit_code == 2 and "2 results runs (oracle-joint, second); choose one with --run" in two.output
    missing = runner.invoke(main, ["export", str(tiny_session), "--run", "nope", "--out", str(tmp_path / "y")])
    assert missing.exit_code == 2 and "nope" in missing.output
    outside = runner.invoke(
        main, ["export", str(tiny_session), "--run", "oracle-joint", "--out", str(tmp_path / "z"), "--frames", "1:3"]
    )
    assert outside.exit_code == 2 and "not done" in outside.output


def test_rig_convert_round_trip(tmp_path):
    out = CliRunner().invoke(main, ["rig", "convert", str(DEMO_RIG), str(tmp_path / "emc")])
    assert out.exit_code == 0, out.output
    back = CliRunner().invoke(main, ["rig", "convert", str(tmp_path / "emc"), str(tmp_path / "back.toml")])
    assert back.exit_code == 0 and (tmp_path / "back.toml").exists()


def test_refine_and_export_take_the_frame_grammar(tiny_session, tmp_path):
    """refine, export (and every other command) read --frames with one grammar: lists, steps."""
    runner = CliRunner()
    args = ["refine", str(tiny_session), "--predictor", "oracle", "--set", "outer_iterations=1"]
    out = runner.invoke(main, [*args, "--set", "fit.iterations=3", "--frames", "0,2", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "2/3 frames done" in out.output
    assert "refine oracle-joint" not in out.output and "frame 0: " not in out.output  # --quiet: no bar, no detail
    from mvcap.capture import Session

    with Session.open(tiny_session) as s:
        assert s.read_results("oracle-joint").done.tolist() == [True, False, True]
    exp = runner.invoke(
        main, ["export", str(tiny_session), "--run", "oracle-joint", "--out", str(tmp_path / "x"), "--formats", "csv",
               "--frames", "::2"],
    )  # fmt: skip
    assert exp.exit_code == 0, exp.output
    assert "exported 2 frames (0, 2)" in exp.output
    rows = (tmp_path / "x" / "oracle-joint_joints.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["0", "2"]
    cmds = (["overlay", "--run", "oracle-joint", "--out", str(tmp_path / "o")], ["detect"], ["init"], ["register"])
    for cmd in cmds:
        bad = runner.invoke(main, [cmd[0], str(tiny_session), *cmd[1:], "--frames", "1:7:2"])
        assert bad.exit_code == 2 and "asks for frame(s) 3,5 but session" in bad.output, (cmd, bad.output)
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(f'[capture]\nsession = "{tiny_session}"\n')
    bad = runner.invoke(main, ["run", str(run_toml), "--frames", "1:7:2"])
    assert bad.exit_code == 2 and "asks for frame(s) 3,5 but the session has 3 frames" in bad.output, bad.output


def test_refine_learned_weights_say_what_is_wrong(tiny_session):
    """An unknown network name lists the shipped ones; the flow-correcting network asked for a
    coarse-to-fine pass it does not have says which setting to change. Neither is a crash."""
    runner = CliRunner()
    base = ["refine", str(tiny_session), "--frames", "0", "--predictor", "learned"]
    out = runner.invoke(main, [*base, "--run", "a", "--set", "learned_weights=lite_nope"])
    assert out.exit_code != 0 and "lite, lite_flowprior" in out.output and "internal error" not in out.output
    fine = ["--set", "learned_weights=lite_flowprior", "--set", "learned_fine_px=2"]
    out = runner.invoke(main, [*base, "--run", "b", *fine])
    assert out.exit_code != 0 and "set learned_fine_px = 0" in out.output and "internal error" not in out.output


def test_refine_device_option_says_what_is_wrong(tiny_session):
    """--device goes to refine.device; a name it does not know, or CUDA on a machine without
    it, is a one-line error before any frame is touched."""
    import pytest
    import torch

    runner = CliRunner()
    out = runner.invoke(main, ["refine", str(tiny_session), "--frames", "0", "--device", "tpu"])
    assert out.exit_code == 2 and "device must be 'cpu', 'cuda', 'cuda:N' or 'auto'" in out.output
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = runner.invoke(main, ["refine", str(tiny_session), "--frames", "0", "--device", "cuda"])
    assert out.exit_code == 2 and "no CUDA device" in out.output and "Traceback" not in out.output
