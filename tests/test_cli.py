from click.testing import CliRunner

from mvcap.cli import main
from mvcap.demo import DEMO_RIG


def test_help_lists_commands():
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0
    for cmd in ("demo", "synth", "refine", "bench", "rig", "build-body"):
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
    out = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "projection.png").stat().st_size > 10_000
    assert (tmp_path / "passes.png").stat().st_size > 10_000


def test_refine_missing_session_is_a_clear_error(tmp_path):
    out = CliRunner().invoke(main, ["refine", str(tmp_path / "nope.h5")])
    assert out.exit_code != 0 and "no such session" in out.output
