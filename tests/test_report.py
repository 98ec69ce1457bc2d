import re
import shutil
import subprocess

import pytest

from mvcap.capture import SessionError
from mvcap.report import ReportConfig, build_report

SMALL = ReportConfig(overlay_frames=2, turntable_frames=1, turntable_steps=4, turntable_size=96)


@pytest.fixture
def report(tiny_session, tmp_path, write_gt_run):
    write_gt_run(tiny_session, [0, 1], shift=[0.01, 0.0, 0.0])  # 10 mm off everywhere
    return build_report(
        tiny_session,
        "fake",
        tmp_path / "r" / "report.html",
        SMALL,
        summary={"failures": ["frame 2: no initial estimate"]},
    )


def test_report_content(report):
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "http://" not in text and "https://" not in text  # self-contained
    assert "2 / 3" in text and "frame 2: no initial estimate" in text
    # accuracy: a pure 10 mm translation gives MPJPE = PVE = 10.0 mm, PA = 0
    row = re.search(r"<td>refined</td>(.*?)</tr>", text).group(1)
    nums = [float(x) for x in re.findall(r"<td>([\d.]+)</td>", row)]
    assert nums == pytest.approx([10.0, 0.0, 10.0, 0.0], abs=0.05)
    assert text.count("data:image/jpeg;base64,") == 2 * 4  # 2 frames x 4 views
    assert text.count("data:image/gif;base64,") == 1
    assert text.count("data:image/png;base64,") == 3  # residual, iterations/time, accuracy plots


def test_report_errors(tiny_session, tmp_path):
    with pytest.raises(SessionError, match="no results run 'none'"):
        build_report(tiny_session, "none", tmp_path / "x.html", SMALL)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_in_headless_chromium(report, tmp_path):
    """Open the page in a real browser: it parses, every image decodes, and the screenshot
    shows the page (not a blank or error page)."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed: `make test` installs it (apt-get install chromium) when it can")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"]
    # the DOM after load, with a probe that counts images the browser failed to decode
    probe = report.with_name("probe.html")
    probe.write_text(
        report.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load',()=>{const im=[...document.images];"
            "document.title='IMAGES '+im.length+' BROKEN '+im.filter(i=>!(i.complete&&i.naturalWidth>0)).length;});"
            "</script></body>",
        )
    )
    dom = subprocess.run(
        flags + ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r"<title>IMAGES (\d+) BROKEN (\d+)</title>", dom.stdout)
    assert m, dom.stdout[:500]
    assert int(m.group(1)) == 2 * 4 + 1 + 3 and int(m.group(2)) == 0
    shot = tmp_path / "shot.png"
    r = subprocess.run(flags + [f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import cv2

    img = cv2.imread(str(shot))
    assert img.shape[:2] == (1600, 1200)
    header = img[5:40, 5:600]
    assert header.mean() < 80  # the dark title bar rendered
    assert img.std() > 30  # not a blank page


def test_validation_section_shows_rig_warnings():
    from mvcap.report import _validation_section

    cam = dict(view="cam01", frames=3, init_keypoint_pct=2.0, result_keypoint_pct=1.5, init_iou=0.8, result_iou=0.85,
               init_photometric=10.0, result_photometric=9.0, verdict="improved")  # fmt: skip
    v = {"predictor": "flow", "frames": [0, 1, 2], "cameras": [cam]}
    assert "does not fit" not in _validation_section(v)
    worse = _validation_section({**v, "cameras": [{**cam, "verdict": "worse"}]})
    assert "<li class='bad'>refinement did not improve this capture in cam01: the result disagrees MORE" in worse
    warned = _validation_section({**v, "rig_warnings": ["camera cam01: ... `mvcap rig refine` corrects <it>"]})
    assert "The rig does not fit this take" in warned and "&lt;it&gt;" in warned
    assert "checks its detections sit" not in warned  # a report from before the count: no line
    disputed = _validation_section({**v, "cameras": [{**cam, "disputed": 2}], "dispute_pct": 5.0})
    assert "cam01: in 2 of 3 checks its detections sit more than 5 % of the height off" in disputed
    assert "seldom gets closer" not in disputed and "keypoints, %</th>" not in disputed  # before the column: none
    others = _validation_section({**v, "cameras": [{**cam, "others_keypoint_pct": 1.234}]})
    assert "<th>other cameras' keypoints, %</th>" in others and "<td>1.23</td>" in others
    assert "a body that follows those cameras seldom gets closer" in others
