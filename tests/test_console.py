import os
import subprocess
import sys

import pytest

from mvcap import console


@pytest.fixture
def verbosity():
    """Restore the process-wide verbosity after a test that changes it."""
    old = console.verbosity()
    yield
    console.set_verbosity(old)


def test_native_stderr_keeps_errors_and_drops_chatter(capfd, verbosity):
    """Lines written straight to file descriptor 2 (as C++ libraries do): INFO/W lines dropped,
    errors and anything unrecognised kept; --verbose keeps everything."""
    lines = (
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "W0000 00:00:1.0 123 inference_feedback_manager.cc:114] Feedback manager requires a model\n"
        "E0000 00:00:1.0 123 graph.cc:9] Calculator failed: a real error\n"
        "Segmentation hint from a library\n"
    )
    console.set_verbosity(console.NORMAL)
    capfd.readouterr()
    with console.filtered_native_stderr():
        os.write(2, lines.encode())
    err = capfd.readouterr().err
    assert "a real error" in err and "Segmentation hint" in err
    assert "inference_feedback_manager" not in err and "XNNPACK" not in err and "InitializeLog" not in err
    console.set_verbosity(console.VERBOSE)
    with console.filtered_native_stderr():
        os.write(2, lines.encode())
    assert capfd.readouterr().err == lines


def test_quiet_hides_progress_and_info_but_not_warnings(capsys, verbosity):
    import logging

    log = logging.getLogger("mvcap.some_module")
    console.set_verbosity(console.QUIET)
    assert not console.show_progress() and not console.show_progress(True)
    log.info("stage message")
    log.warning("something is off")
    console.set_verbosity(console.VERBOSE)
    assert console.show_progress() and not console.show_progress(False)
    log.debug("frame 3: converged")
    err = capsys.readouterr().err
    assert "stage message" not in err
    assert "warning: something is off" in err and "frame 3: converged" in err
    with pytest.raises(ValueError, match="verbosity"):
        console.set_verbosity(5)


_DETECT = """
import numpy as np
from mvcap import console
from mvcap.detect import DetectConfig, PoseDetector
console.set_verbosity(console.{level})
with PoseDetector(DetectConfig()) as d:
    for _ in range(2):
        d(np.zeros((96, 96, 3), np.uint8))
"""


def test_mediapipe_start_up_chatter_is_silenced():
    """MediaPipe 0.10.14 / TF Lite print 'W0000 ... inference_feedback_manager' and absl lines on
    every detector start; a plain detect shows none of them, --verbose shows them."""
    pytest.importorskip("mediapipe")

    def stderr_of(level: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL")}
        run = subprocess.run([sys.executable, "-c", _DETECT.format(level=level)], capture_output=True, text=True,
                             env=env, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run.stderr

    assert "inference_feedback_manager" in stderr_of("VERBOSE")  # the chatter is real
    quiet = stderr_of("NORMAL")
    assert "inference_feedback_manager" not in quiet and "W0000" not in quiet and "XNNPACK" not in quiet, quiet
