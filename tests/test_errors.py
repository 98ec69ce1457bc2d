"""One error base: every module error is an MvcapError, and the CLI turns anything else into one line."""

import importlib
import inspect
import pkgutil

from click.testing import CliRunner

import mvcap
from mvcap.cli import main
from mvcap.demo import DEMO_RIG
from mvcap.errors import MvcapError

# modules whose import needs an optional extra (checked only when it is installed)
OPTIONAL = {"mvcap.tools.build_body": "anny"}
# control-flow signals, not errors: raised and caught inside one function, never shown to a user
SIGNALS = {"mvcap.nets.train._Stop"}


def _all_modules():
    names = [m.name for m in pkgutil.walk_packages(mvcap.__path__, "mvcap.") if m.name != "mvcap.__main__"]
    mods = []
    for name in names:
        try:
            mods.append(importlib.import_module(name))
        except ImportError as exc:
            assert name in OPTIONAL and OPTIONAL[name] in str(exc), f"{name} does not import: {exc}"
    return mods


def test_every_module_error_is_an_mvcap_error():
    mods = _all_modules()
    assert {"mvcap.cli", "mvcap.capture", "mvcap.detect", "mvcap.sources", "mvcap.frames"} <= {m.__name__ for m in mods}
    errors = {
        f"{m.__name__}.{name}": obj
        for m in mods
        for name, obj in vars(m).items()
        if inspect.isclass(obj)
        and obj.__module__ == m.__name__  # defined there, not imported
        and issubclass(obj, Exception)
        and not issubclass(obj, Warning)
    }
    # the known ones are all there (a renamed or moved error should update this list) ...
    for name in (
        "mvcap.register.RegisterError", "mvcap.subject.SubjectError", "mvcap.nets.predictor.WeightsError",
        "mvcap.calibrate.CalibrationError", "mvcap.config.ConfigError", "mvcap.cameras.RigError",
        "mvcap.export.ExportError", "mvcap.ingest.IngestError", "mvcap.triangulate.TriangulateError",
        "mvcap.initialize.InitError", "mvcap.capture.SessionError", "mvcap.detect.DetectError",
        "mvcap.pipeline.RunError", "mvcap.frames.FrameSelectionError", "mvcap.sources.SourceError",
    ):  # fmt: skip
        assert name in errors, name
    # ... and every error type defined anywhere in mvcap derives from the one base
    wrong = sorted(n for n, cls in errors.items() if not issubclass(cls, MvcapError) and n not in SIGNALS)
    assert wrong == [], wrong
    assert issubclass(MvcapError, ValueError)


def test_unexpected_exception_is_one_line_with_the_traceback_file(monkeypatch, tmp_path):
    import mvcap.rigio

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero somewhere deep")

    monkeypatch.setattr(mvcap.rigio, "load_rig", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MVCAP_DEBUG", raising=False)
    out = CliRunner().invoke(main, ["rig", "show", str(DEMO_RIG)])
    assert out.exit_code == 70
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.output, out.output
    assert lines[0].startswith("internal error (a bug in mvcap") and "ZeroDivisionError" in lines[0]
    (crash,) = (tmp_path / "cache" / "mvcap").glob("crash-*.txt")
    assert str(crash) in lines[0]
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and "division by zero somewhere deep" in text
    assert "def broken" not in text and "in broken" in text  # the frame that raised is in it


def test_user_errors_stay_one_line_error(monkeypatch, tmp_path):
    import mvcap.rigio

    def bad(*args, **kwargs):
        raise MvcapError("the rig is wrong; fix it like so")

    monkeypatch.setattr(mvcap.rigio, "load_rig", bad)
    out = CliRunner().invoke(main, ["rig", "show", str(DEMO_RIG)])
    assert out.exit_code == 2 and out.output == "error: the rig is wrong; fix it like so\n"


def test_refine_frames_past_the_end_is_one_line(tiny_session):
    """Issue 13: `mvcap refine --frames 5:9` on a 3-frame session ended in a traceback."""
    out = CliRunner().invoke(main, ["refine", str(tiny_session), "--predictor", "oracle", "--frames", "5:9"])
    assert out.exit_code == 2, out.output
    assert out.output.count("\n") == 1 and "Traceback" not in out.output
    assert out.output.startswith("error: frames '5:9' asks for frame(s) 5:9 but session ")
    assert "has 3 frames (0..2)" in out.output
    bad = CliRunner().invoke(main, ["refine", str(tiny_session), "--frames", "2:1"])
    assert bad.exit_code == 2 and bad.output.startswith("error: frames '2:1': the range '2:1' is empty")
