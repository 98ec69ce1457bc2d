"""Frame storage options for the session file: size and read speed on a real session.

    python benchmarks/session_storage.py demo_out/session.h5     # after `make demo`

Copies the frames of every view of the session into one scratch HDF5 file per option and
reports the file size (frames only) and the time to read every frame of every view back as
(H, W, 3) uint8 (median of 3 passes, one thread). Options: HDF5 filters on (T, H, W, 3)
uint8 datasets chunked one frame per chunk (none, lzf, gzip levels 1/4/6, gzip 4 + shuffle),
and encoded images stored as opaque per-frame byte strings (PNG, lossless; JPEG, lossy: the
PSNR against the stored frames is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

FILTERS = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip-1": {"compression": "gzip", "compression_opts": 1},
    "gzip-4": {"compression": "gzip", "compression_opts": 4},
    "gzip-6": {"compression": "gzip", "compression_opts": 6},
    "gzip-4+shuffle": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
}
CODECS = {
    "png-1": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
    "png-6": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]),
    "jpeg-95": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "jpeg-90": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
}


def load_frames(session: Path) -> dict[str, np.ndarray]:
    """{view: (T, H, W, 3) uint8} of the written frames."""
    with h5py.File(session, "r") as f:
        return {v: g["images"][np.flatnonzero(g["written"][()])] for v, g in f["frames"].items()}


def write_filtered(path: Path, frames: dict, opts: dict) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        for v, x in frames.items():
            f.create_dataset(v, data=x, chunks=(1,) + x.shape[1:], **opts)
    return time.perf_counter() - t0


def read_filtered(path: Path) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        return [f[v][t] for v in f for t in range(f[v].shape[0])]


def write_encoded(path: Path, frames: dict, ext: str, params: list) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        for v, x in frames.items():
            ds = f.create_dataset(v, shape=(len(x),), dtype=h5py.vlen_dtype(np.uint8))
            for t, img in enumerate(x):
                ok, buf = cv2.imencode(ext, img[..., ::-1], params)
                assert ok
                ds[t] = buf.ravel()
    return time.perf_counter() - t0


def read_encoded(path: Path) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        return [cv2.imdecode(f[v][t], cv2.IMREAD_COLOR)[..., ::-1] for v in f for t in range(f[v].shape[0])]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("session", type=Path)
    ap.add_argument("--videos", type=Path, default=None, help="folder of the source videos (default: capture/ beside)")
    a = ap.parse_args()
    frames = load_frames(a.session)
    ref = [x[t] for x in frames.values() for t in range(len(x))]
    n = len(ref)
    raw = sum(x.nbytes for x in frames.values())
    shape = next(iter(frames.values())).shape
    print(f"{a.session}: {len(frames)} views x {shape[0]} frames of {shape[2]}x{shape[1]}, raw {raw / 1e6:.2f} MB")
    print(f"session file as stored: {a.session.stat().st_size / 1e6:.2f} MB")
    videos = a.videos or a.session.parent / "capture"
    mp4 = sum(p.stat().st_size for p in videos.glob("*.mp4")) if videos.is_dir() else 0
    if mp4:
        print(f"source videos ({videos}/*.mp4): {mp4 / 1e6:.3f} MB")
    print("| storage | frames MB | x raw | x videos | write s | read ms/frame | PSNR dB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(k, write_filtered, read_filtered, (o,)) for k, o in FILTERS.items()]
        runs += [(k, write_encoded, read_encoded, c) for k, c in CODECS.items()]
        for name, write, read, args in runs:
            path = Path(tmp) / f"{name}.h5"
            w = write(path, frames, *args)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                back = read(path)
                times.append(time.perf_counter() - t0)
            q = min(psnr(x, y) for x, y in zip(ref, back, strict=True))
            size = path.stat().st_size
            quality = "lossless" if q == float("inf") else f"{q:.1f}"
            print(
                f"| {name} | {size / 1e6:.2f} | {size / raw:.2f} | {size / mp4 if mp4 else float('nan'):.1f} | "
                f"{w:.2f} | {1e3 * statistics.median(times) / n:.2f} | {quality} |"
            )


if __name__ == "__main__":
    main()
