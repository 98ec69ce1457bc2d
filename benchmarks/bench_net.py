"""Benchmark: displacement-predictor time per view on the CPU (and the GPU when there is one).

    python benchmarks/bench_net.py [--weights models/displacement/lite.pt] [--size 512] [--repeats 5]
    (default weights: the default network, lite_flowprior)

One synthetic frame (4 views, ``--size`` pixels, standard-benchmark look) is rendered; the
estimate is the frame's regression-like initial estimate. Times, per view (median over
repeats after a warm-up): the learned predictor end to end (crop around the rendered
person, resample photo + passes, network forward, map back to full-image pixels) with 1 and
2 torch threads; the network forward alone; and the DIS flow baseline. With ``--paper``
the full-size ``paper`` network (random weights: timing only) is timed as well, on the GPU when
there is one. With CUDA the lite predictor is also timed end to end with its network on the GPU.
The last rows are what refinement runs: the request is the body's render window
(:func:`mvcap.refine.view_windows`), with the whole-body pass alone and with the coarse-to-fine
pass (``--fine-px``, ``--max-crop``: ``learned_fine_px`` / ``learned_max_crop``).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mvcap.body import load_body_model
from mvcap.capture import Session
from mvcap.displace import FlowConfig, FlowPredictor, PredictRequest
from mvcap.nets.displacement import DisplacementNet, NetConfig
from mvcap.nets.predictor import LearnedPredictor, default_weights_path
from mvcap.refine import ESTIMATE_PASSES, estimate_request, subject_appearance, view_windows
from mvcap.render import render, undistort_images
from mvcap.synth import generate_session, load_scene_config

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn, repeats: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def _crop_windows(req: PredictRequest, scale: float) -> list[int]:
    """The network's crop window (request pixels) in each view of ``req`` that sees the body."""
    from mvcap.nets.displacement import crop_window

    return [w.size for w in (crop_window(m, scale) for m in req.fragments.mask.numpy()) if w is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None, help="weights file (default: the default shipped network)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paper", action="store_true", help="also time the paper-size network (random weights)")
    ap.add_argument("--fine-px", type=float, default=2.0, help="coarse-to-fine pass: image px per crop px")
    ap.add_argument("--max-crop", type=int, default=192, help="coarse-to-fine pass: largest crop")
    a = ap.parse_args()

    model = load_body_model()
    cfg = load_scene_config(
        ROOT / "configs" / "bench" / "standard.toml",
        [f"rig.image_size=[{a.size},{a.size}]", "num_subjects=1", "frames_per_subject=1"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = generate_session(Path(tmp) / "frame.h5", cfg, model, progress=False)
        with Session.open(path) as s:
            rig, subject = s.rig, s.subject
            photos = undistort_images(rig, s.read_frame(0))
            init = s.read_init([0])
    pinhole = rig.without_distortion()
    with torch.no_grad():
        verts = model(**init.to_torch()).vertices[0]
    frags, passes = render(
        pinhole,
        verts,
        model.faces,
        template_vertices=model.template_vertices()[0],
        passes=ESTIMATE_PASSES,
        **subject_appearance(model, subject).render_kwargs(),
    )
    req = PredictRequest(photos, passes, frags, pinhole, verts, model.faces)
    V = len(rig)

    rows = []
    learned = LearnedPredictor.load(a.weights, device="cpu")
    weights = a.weights or default_weights_path()
    n_params = sum(p.numel() for p in learned.net.parameters())
    for threads in (1, 2):
        learned.cpu_threads = threads
        torch.set_num_threads(threads)
        ms = _median_ms(lambda: learned(req), a.repeats) / V
        rows.append((f"learned lite ({n_params / 1e6:.2f} M params), end to end", threads, ms))
    S = learned.cfg.crop_size
    x_photo = torch.rand(V, 3, S, S)
    x_render = torch.rand(V, learned.cfg.render_in_channels, S, S)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            ms = _median_ms(lambda: learned.net(x_photo, x_render), a.repeats) / V
        rows.append((f"lite network forward only ({S}x{S} crops)", threads, ms))
    flow = FlowPredictor(FlowConfig())
    rows.append(("DIS optical flow baseline", 1, _median_ms(lambda: flow(req), a.repeats) / V))
    if torch.cuda.is_available():
        gpu = LearnedPredictor.load(a.weights, device="cuda")
        name = torch.cuda.get_device_name(0)
        rows.append((f"learned lite, end to end, network on {name}", 2, _median_ms(lambda: gpu(req), a.repeats) / V))
    if a.paper:  # on the GPU when there is one (a CPU forward takes seconds)
        from mvcap.config import load_config

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        pcfg = load_config(NetConfig, ROOT / "configs" / "nets" / "paper.toml")
        net = DisplacementNet(pcfg).eval().to(dev)
        Sp = pcfg.crop_size
        xp, xr = torch.rand(V, 3, Sp, Sp, device=dev), torch.rand(V, pcfg.render_in_channels, Sp, Sp, device=dev)
        torch.set_num_threads(2)
        n = sum(p.numel() for p in net.parameters())
        for amp in (False, True) if dev == "cuda" else (False,):
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
                ms = _median_ms(lambda: net(xp, xr), max(1, a.repeats // 2)) / V
            what = f"paper network forward ({n / 1e6:.1f} M params, {Sp}x{Sp}, {V} views at once, {dev}"
            rows.append((what + (", bf16)" if amp else ")"), 2, ms))

    # what refinement asks for: the body's window, at most render_max_side pixels
    windows = view_windows(pinhole, verts, learned.render_max_side)
    wreq = estimate_request(model, pinhole, photos, verts, subject_appearance(model, subject), None, windows)
    passes = [(learned, "whole-body pass" + (" on its flow" if learned.cfg.flow_prior else ""))]
    if not learned.cfg.flow_prior:  # a flow-prior network has no coarse-to-fine pass
        fine = LearnedPredictor.load(a.weights, device="cpu", fine_px=a.fine_px, max_crop=a.max_crop)
        crops = _crop_windows(wreq, fine.cfg.crop_scale)
        sizes = sorted({fine.fine_size(w, p) for w, p in zip(crops, windows.image_px)})
        passes.append((fine, f"coarse to fine, fine pass at {sizes}"))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for p, what in passes:
            p.cpu_threads = threads
            ms = _median_ms(functools.partial(p, wreq), a.repeats) / V
            rows.append((f"learned lite, render window, {what}", threads, ms))

    print(f"weights: {weights}; {V} views of {a.size}x{a.size}; median of {a.repeats} after a warm-up\n")
    print("| predictor | torch threads | ms / view |")
    print("|---|---:|---:|")
    for name, th, ms in rows:
        print(f"| {name} | {th} | {ms:.1f} |")


if __name__ == "__main__":
    main()
