"""Benchmark: BodyModel forward on CPU (batch of 16), median of timed runs.

    python benchmarks/bench_body.py [--batch 16] [--runs 50]

Prints a markdown table: threads, batch, median / min ms per forward, and the
same with gradients (forward + backward w.r.t. pose, betas, transl).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mvcap.body import load_body_model


def _time(fn, runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    body = load_body_model()
    gen = torch.Generator().manual_seed(0)
    pose = torch.randn(args.batch, 24, 3, generator=gen) * 0.3
    betas = torch.randn(args.batch, 10, generator=gen)
    transl = torch.randn(args.batch, 3, generator=gen)

    def forward():
        with torch.no_grad():
            body(pose, betas, transl)

    def forward_backward():
        p, b, t = (x.clone().requires_grad_() for x in (pose, betas, transl))
        out = body(p, b, t)
        out.vertices.sum().backward()

    default_threads = torch.get_num_threads()
    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
            t = _time(fn, args.runs)
            rows.append((threads, name, statistics.median(t), min(t)))
    torch.set_num_threads(default_threads)

    print(
        f"BodyModel ({body.num_vertices} vertices, {body.faces.shape[0]} faces), "
        f"batch {args.batch}, CPU, torch {torch.__version__}, median of {args.runs} runs\n"
    )
    print("| threads | pass | median ms | min ms | ms per body |")
    print("|---:|---|---:|---:|---:|")
    for threads, name, med, mn in rows:
        print(f"| {threads} | {name} | {med:.2f} | {mn:.2f} | {med / args.batch:.3f} |")


if __name__ == "__main__":
    main()
