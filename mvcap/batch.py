"""``mvcap batch``: many takes, or long takes in chunks of frames, refined on Ray.

Each run config (as for ``mvcap run``) goes through the stages before refinement on this
machine (ingest, init, subject: :func:`mvcap.pipeline.prepare_run`); then the refinement of
every config's frames is pooled on Ray workers; then each config's validate / export / report
stages run (:func:`mvcap.pipeline.finish_run`).

- **Ray**: an embedded local Ray by default (no setup; ``workers`` CPUs of this machine), or
  a running cluster (``address="auto"`` on a node of a cluster started with ``ray start``, or
  ``ray://host:10001``) to use several machines. Every node needs the same mvcap installed.
- **One writer per session**: this process (the driver) reads each frame's inputs from the
  session file (:func:`mvcap.refine.read_frame_task`), a worker refines it
  (:func:`mvcap.refine.refine_task`, no file access, so workers need no shared disk) and sends
  the result back, and the driver writes it (:func:`mvcap.refine.record_outcome`): the same
  three steps as :func:`mvcap.refine.refine_session`, so results are the same as a sequential
  run's.
- **Frames that depend on the previous one** (``refine.init = "previous"`` or a temporal term,
  ``refine.fit.w_temporal > 0``) cannot be split into chunks: such a session's frames run one
  after another, in order (one in flight at a time), while other sessions fill the other
  workers.
- **Resumable**: frames already done are skipped, failed frames are recorded and retried by
  a rerun (as ``mvcap refine`` does); progress counts frames done over the whole batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mvcap.errors import MvcapError
from mvcap.refine import FrameOutcome, RefineConfig, needs_previous, open_refine_run, refine_task, refine_tasks

log = logging.getLogger(__name__)

__all__ = [
    "BatchError",
    "BatchConfig",
    "RefineJob",
    "JobResult",
    "import_ray",
    "plan_chunks",
    "refine_batch",
    "run_batch",
]

RAY_MISSING = "mvcap batch needs Ray, which is not installed: pip install 'mvcap[batch]'"
#: tasks queued per worker: the next one is read and sent while the worker computes
QUEUE_PER_WORKER = 2


class BatchError(MvcapError):
    """The batch cannot run (Ray missing or unreachable, two configs writing one run, ...)."""


def import_ray():
    """The ``ray`` module, or a :class:`BatchError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BatchError(RAY_MISSING) from exc
    return ray


@dataclass(frozen=True)
class BatchConfig:
    """Where and how the batch runs."""

    address: str = ""  # "" = an embedded local Ray; "auto" or "ray://host:10001" = a running cluster
    workers: int = 0  # Ray workers, one CPU each; 0 = one per CPU (this machine's, or the cluster's)
    chunk_frames: int = 1  # frames per task for sessions whose frames are independent

    def __post_init__(self):
        if self.workers < 0:
            raise BatchError(f"workers must be >= 0 (0 = one per CPU), got {self.workers}")
        if self.chunk_frames < 1:
            raise BatchError(f"chunk_frames must be >= 1, got {self.chunk_frames}")


@dataclass(frozen=True)
class RefineJob:
    """One session's refinement in a batch: results run ``run`` of ``session`` with ``cfg``,
    for ``frames`` (None: all); ``overwrite`` discards the run first (else it resumes)."""

    session: Path
    run: str
    cfg: RefineConfig = RefineConfig()
    frames: tuple[int, ...] | None = None
    overwrite: bool = False


@dataclass
class JobResult:
    """What a batch did for one job: the run's stored Results, failures (frame, reason) and
    events (see :func:`mvcap.refine.refine_session`), frames_total (the job's frames),
    frames_skipped (already done before the batch), frames_done (refined by the batch),
    sequential (its frames ran one after another: they depend on the previous result)."""

    job: RefineJob
    results: object = None
    failures: list = field(default_factory=list)
    events: dict = field(default_factory=dict)
    frames_total: int = 0
    frames_skipped: int = 0
    frames_done: int = 0
    sequential: bool = False


def plan_chunks(todo: list[int], chunk_frames: int) -> list[list[int]]:
    """The frames ``todo`` cut into tasks of at most ``chunk_frames`` frames, in order."""
    return [list(todo[i : i + chunk_frames]) for i in range(0, len(todo), chunk_frames)]


class _Worker:
    """A Ray actor: holds the body model and the predictors, refines frame tasks."""

    def __init__(self, threads: int = 1):
        from mvcap.body import load_body_model

        self.model = load_body_model()
        self.models: dict[str, object] = {}  # the body model per RefineConfig.device
        self.threads = threads
        self.predictors: dict[str, object] = {}

    def version(self) -> str:
        import mvcap

        return mvcap.__version__

    def refine(self, context, tasks, prev) -> list[FrameOutcome]:
        """Refine ``tasks`` (FrameTask, in order) of one session; context: (cfg, appearance,
        definition, subject); prev: the result before the first task (sequential sessions only)."""
        import copy
        import json

        import numba
        import torch

        from mvcap.config import to_dict
        from mvcap.refine import make_predictor, model_on_device

        # one CPU per worker: the renderer's and torch's thread pools must not oversubscribe it
        torch.set_num_threads(self.threads)
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        # Ray hands numpy arrays over read-only (zero copy from its object store); refinement
        # code may write into its inputs, as it can in a sequential run
        context, tasks, prev = copy.deepcopy((context, tasks, prev))
        cfg, appearance, definition, subject = context
        if cfg.device not in self.models:
            self.models[cfg.device] = model_on_device(self.model, cfg.device)
        model = self.models[cfg.device]
        appearance = appearance.to(model.v_template.device)
        predictor = None
        if cfg.predictor != "oracle":
            net = subject.displacement_net if subject is not None else None
            key = json.dumps(to_dict(cfg), sort_keys=True) + (str(hash(net)) if net is not None else "")
            if key not in self.predictors:
                self.predictors[key] = make_predictor(cfg.predictor, cfg, subject=subject)
            predictor = self.predictors[key]
        if not needs_previous(cfg):  # in refine_session's groups of frames
            batch = cfg.frame_batch
            return [
                out
                for k in range(0, len(tasks), batch)
                for out in refine_tasks(model, tasks[k : k + batch], predictor, cfg, appearance, definition)
            ]
        out = []
        for task in tasks:
            res = refine_task(model, task, predictor, cfg, appearance, definition, prev, catch=True)
            # as refine_session's `known`: only a written (not failed) result is a previous result
            prev = (res.result.pose_rotvecs, res.result.transl) if res.result is not None and not res.failure else None
            out.append(res)
        return out


@contextlib.contextmanager
def _ray_session(ray, cfg: BatchConfig):
    """Ray connected (started locally or joined) for the block; yields the number of workers.
    A Ray this function did not start (already initialised by the caller) is left running."""
    started = False
    if not ray.is_initialized():
        try:
            if cfg.address:  # a running cluster: its settings are its own
                ray.init(address=cfg.address)
            else:
                ray.init(num_cpus=cfg.workers or os.cpu_count() or 1, include_dashboard=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {cfg.address!r}" if cfg.address else "a local Ray"
            why = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
            raise BatchError(
                f"cannot start or reach {where}: {why}; "
                "start a cluster with `ray start --head` (then --address auto), or leave --address out for a local "
                "Ray; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token here"
            ) from exc
        started = True
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if cfg.workers > cpus:
            log.warning("%d workers asked for, the Ray cluster has %d CPUs: using %d", cfg.workers, cpus, cpus)
        yield min(cfg.workers or cpus, cpus)
    finally:
        if started:
            ray.shutdown()


class _Live:
    """A job being refined: its open results run, frames still to send, frames in flight."""

    def __init__(self, job: RefineJob, result: JobResult, stack: contextlib.ExitStack, run, context_ref, chunk: int):
        self.job, self.result, self.stack, self.run, self.context = job, result, stack, run, context_ref
        self.sequential = result.sequential
        if not self.sequential:  # whole groups of refine.frame_batch frames, as refine_session groups them
            group = job.cfg.frame_batch
            chunk = -(-chunk // group) * group
        self.chunks = deque([[t] for t in run.todo] if self.sequential else plan_chunks(run.todo, chunk))
        self.in_flight = 0

    def next_chunk(self) -> list[int] | None:
        if not self.chunks or (self.sequential and self.in_flight):
            return None
        return self.chunks.popleft()

    @property
    def finished(self) -> bool:
        return not self.chunks and not self.in_flight


def _label(job: RefineJob) -> str:
    return f"{Path(job.session).name}:{job.run}"


def _one_writer(runs: list[tuple[Path, str]]) -> None:
    """Refuse two jobs writing the same results run of the same session."""
    keys = [(Path(path).resolve(), name) for path, name in runs]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise BatchError(
                f"two jobs write run {key[1]!r} of {key[0]}: a results run has one writer; give them different names"
            )


def refine_batch(
    jobs: list[RefineJob],
    cfg: BatchConfig = BatchConfig(),
    model=None,
    progress: bool = True,
    timings: dict | None = None,
) -> list[JobResult]:
    """Refine every job's frames on Ray workers; results are written by this process, one
    writer per session (see the module docstring). Returns one JobResult per job, in order.
    model: the body model for this process's part (appearance, keypoint definitions);
    workers load the default body model. timings: if a dict is given, it receives wall
    seconds: ``check`` (opening every job), ``ray`` (starting or joining Ray), ``workers``
    (the workers' start-up: imports, body model), ``refine`` (the frames, until the last
    result is written)."""
    from mvcap.body import load_body_model

    ray = import_ray()
    from tqdm import tqdm  # after ray: its missing-module error comes first

    model = model or load_body_model()
    _one_writer([(j.session, j.run) for j in jobs])
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    # check every job before computing anything (configs, frames, subject) and count its frames
    results = []
    for job in jobs:
        with open_refine_run(job.session, job.run, job.cfg, job.frames, model, job.overwrite) as run:
            frames = len(job.frames) if job.frames is not None else run.session.num_frames
            results.append(JobResult(job, None, [], {}, frames, frames - len(run.todo), 0, needs_previous(job.cfg)))
        if results[-1].sequential and len(run.todo) > 1:
            log.info("%s: each frame starts from the previous result: its frames run in order", _label(job))
    total = sum(r.frames_total - r.frames_skipped for r in results)
    timings["check"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with _ray_session(ray, cfg) as num_workers:
        timings["ray"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = ray.remote(num_cpus=1)(_Worker)
        workers = [remote.remote(1) for _ in range(num_workers)]
        try:
            import mvcap

            try:
                versions = set(ray.get([w.version.remote() for w in workers]))
            except ray.exceptions.RayError as exc:
                raise BatchError(
                    f"the Ray workers could not start ({type(exc).__name__}): every node of the cluster needs mvcap "
                    "installed (pip install 'mvcap[batch]'); the workers' logs say more"
                ) from exc
            if versions != {mvcap.__version__}:
                raise BatchError(
                    f"the Ray workers run mvcap {sorted(versions)}, this process {mvcap.__version__}: install the "
                    "same mvcap on every node of the cluster"
                )
            timings["workers"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            _schedule(ray, jobs, results, workers, remote, cfg, model, total, progress, tqdm)
            timings["refine"] = time.perf_counter() - t0
        finally:
            for w in workers:
                ray.kill(w)
    return results


def _schedule(ray, jobs, results, workers, remote, cfg, model, total, progress, tqdm) -> None:
    """The driver loop: keep every worker fed, write results as they come."""
    pending = deque(range(len(jobs)))
    live: list[_Live] = []
    load = {i: 0 for i in range(len(workers))}  # tasks queued per worker slot
    in_flight: dict = {}  # ObjectRef -> (worker slot, its actor, live job, frames)
    bar = tqdm(total=total, desc="batch", unit="frame", disable=not progress)

    def open_next() -> bool:
        """Open the next pending job (a session file is open for one job at a time)."""
        close_finished()
        busy = {Path(x.job.session).resolve() for x in live}
        for _ in range(len(pending)):
            i = pending.popleft()
            if Path(jobs[i].session).resolve() in busy:
                pending.append(i)
                continue
            job, stack = jobs[i], contextlib.ExitStack()
            # overwrite was done by the check pass: from here on the run resumes
            run = stack.enter_context(open_refine_run(job.session, job.run, job.cfg, job.frames, model, False))
            context = ray.put((run.cfg, run.appearance, run.definition, run.subject))  # "auto" resolved
            live.append(_Live(job, results[i], stack, run, context, cfg.chunk_frames))
            return True
        return False

    def next_work():
        while True:
            for x in live:
                chunk = x.next_chunk()
                if chunk is not None:
                    return x, chunk
            if not open_next():
                return None

    def close_finished() -> None:
        for x in [x for x in live if x.finished]:
            live.remove(x)
            x.result.results = x.run.session.read_results(x.job.run)
            x.stack.close()
            r = x.result
            log.info("%s: %d frames refined, %d failed, %d done before", _label(x.job), r.frames_done,
                     len(r.failures), r.frames_skipped)  # fmt: skip

    try:
        while True:
            close_finished()
            while min(load.values()) < QUEUE_PER_WORKER:
                work = next_work()
                if work is None:
                    break
                x, chunk = work
                slot = min(load, key=load.get)
                prev = x.run.known.get(chunk[0] - 1) if x.sequential else None
                tasks = [x.run.read_task(t) for t in chunk]
                ref = workers[slot].refine.remote(x.context, tasks, prev)
                in_flight[ref] = (slot, workers[slot], x, chunk)
                load[slot] += 1
                x.in_flight += 1
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                slot, actor, x, chunk = in_flight.pop(ref)
                load[slot] -= 1
                x.in_flight -= 1
                try:
                    outcomes = ray.get(ref)
                except ray.exceptions.RayError as exc:  # a worker died or could not run the task
                    reason = f"worker failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
                    outcomes = [FrameOutcome(t, None, reason) for t in chunk]
                    if isinstance(exc, ray.exceptions.RayActorError) and workers[slot] is actor:
                        workers[slot] = remote.remote(1)  # once per dead worker, not per task it held
                for out in outcomes:
                    if x.run.record(out, x.result.failures, x.result.events):
                        x.result.frames_done += 1
                    bar.update(1)
                bar.set_postfix_str(
                    ", ".join(
                        f"{_label(y.job)} {y.result.frames_done + y.result.frames_skipped}/{y.result.frames_total}"
                        for y in live[:3]
                    )  # fmt: skip
                )
        close_finished()
    finally:
        bar.close()
        for x in live:
            x.stack.close()


def run_batch(
    configs: list[tuple[object, Path]], cfg: BatchConfig = BatchConfig(), restart: bool = False, progress: bool = True
) -> list:
    """``mvcap batch``: for each (RunConfig, base folder) the stages before refinement, then
    all refinement pooled on Ray (:func:`refine_batch`), then each config's later stages.
    Outputs go to each config's folder, as ``mvcap run CONFIG`` writes them. Returns one
    :class:`mvcap.pipeline.RunSummary` per config; its refine stage time is the batch's."""
    from mvcap.body import load_body_model
    from mvcap.pipeline import _resolve, finish_run, note_refine, prepare_run

    ray = import_ray()  # before any work: say at once when Ray is missing
    _one_writer([(_resolve(Path(base), c.capture.session), c.name) for c, base in configs])
    model = load_body_model()
    with _ray_session(ray, cfg):  # first: an unreachable cluster is said before hours of detection
        prepared = [prepare_run(c, base, None, progress, model=model) for c, base in configs]
        jobs = [RefineJob(p.session_path, p.cfg.name, p.cfg.refine, tuple(p.frames), restart) for p in prepared]
        t0 = time.perf_counter()
        done = refine_batch(jobs, cfg, model, progress)
        seconds = round(time.perf_counter() - t0, 2)
    summaries = []
    for p, r in zip(prepared, done):
        p.summary.stage_seconds["refine"] = seconds
        note_refine(p, r.results, r.failures, r.events)
        summaries.append(finish_run(p, r.results, restart, progress))
    return summaries
