"""Where refinement runs (the CPU or a CUDA device), and an audit of what crosses between the
host and that device.

:func:`resolve_device` turns a config's ``device`` ("cpu", "cuda", "cuda:1", "auto") into a
``torch.device``, with a clear error when CUDA is asked for and absent.

:class:`DeviceAudit` checks, on a machine without a GPU, that code keeps its data on a device:
it simulates one. Inside it, ``torch.device("cpu", 0)`` (:data:`SIMULATED`, "cpu:0") plays
the device and plain ``"cpu"`` the host: a tensor is on the device when it was made with
``device=`` that device, moved there with ``.to()``, placed with :meth:`DeviceAudit.place`
(a module's parameters and buffers, as ``module.to(device)`` would), or computed from such
tensors, and its ``.device`` then says "cpu:0"; every other tensor is on the host. The CPU
rasterizer stands in for nvdiffrast (its fragments are on the device). Code that takes its
device from its data (``x.device``, the body model's buffers) therefore runs as it would on
CUDA, and the audit records, with the place in mvcap's code:

- ``download``: a device tensor of more than ``scalar_max`` elements read on the host
  (``cpu()``, ``to("cpu")``, ``tolist()``); a smaller one is a ``sync``;
- ``sync``: a device scalar read on the host (``item()``, ``float()``, ``bool()``, ``int()``):
  it waits for the device, but moves no data;
- ``upload``: host data (an array, a list, a host tensor) of more than ``scalar_max``
  elements made into a device tensor;
- ``mixed``: an operation that reads device tensors and host tensors other than 0-d scalars:
  on CUDA it raises (or, for an index, copies it up on every call);
- ``error``: ``numpy()`` (or ``np.asarray``) of a device tensor, which raises on CUDA.

The audit slows every torch call; it is for tests and checks, not for runs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from .errors import MvcapError

__all__ = ["SIMULATED", "DeviceAudit", "resolve_device"]


def resolve_device(name: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when present, else the CPU)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise MvcapError(f"unknown device {name!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MvcapError(
            f"device {name!r} asked for, but this torch has no CUDA device ({torch.__version__}); "
            "use device = 'cpu' or 'auto', or install a CUDA build of torch"
        )
    if dev.type not in ("cpu", "cuda"):
        raise MvcapError(f"device {name!r}: mvcap runs on 'cpu' or 'cuda' devices")
    return dev


#: the device :class:`DeviceAudit` simulates: a CPU device with an index, unlike the host's
SIMULATED = torch.device("cpu", 0)
_TAG = "_mvcap_on_device"
_T = torch.Tensor
_NUMPY = {_T.numpy, _T.__array__}
_SCALARS = {_T.item, _T.__float__, _T.__int__, _T.__bool__, _T.__index__}
_FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
              torch.eye, torch.linspace, torch.rand, torch.randn, torch.randint}  # fmt: skip
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _on(x) -> bool:
    return getattr(x, _TAG, False)


def _tensors(x) -> Iterator[torch.Tensor]:
    """The tensors in ``x``: nested tuples, lists, dicts and dataclasses."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            yield from _tensors(getattr(x, f.name))


def _tag(x, on: bool = True):
    """Mark every tensor in ``x`` as on the device (or, ``on`` False, on the host)."""
    for t in _tensors(x):
        setattr(t, _TAG, on)
    return x


def _size(x) -> tuple[int, int]:
    """(elements, bytes) of a tensor, an array, a (nested) list of numbers."""
    if isinstance(x, torch.Tensor):
        return x.numel(), x.numel() * x.element_size()
    if isinstance(x, np.ndarray):
        return x.size, x.nbytes
    if isinstance(x, (list, tuple)):
        sizes = [_size(y) for y in x]
        return sum(n for n, _ in sizes), sum(b for _, b in sizes)
    return 1, 8


def _alias(out, src):
    """On the CPU, moving a tensor to where it is returns the tensor itself: mark a view of
    it instead, so that the original keeps its own place."""
    return out.view_as(out) if out is src else out


def _where() -> str:
    """The first frame in mvcap's code outside this module: ``file:line function``."""
    f = sys._getframe(2)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if path.startswith(_PACKAGE) and not path.endswith("devices.py"):
            return f"{os.path.relpath(path, os.path.dirname(_PACKAGE))}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "outside mvcap"


def _target(args, kwargs) -> bool | None:
    """Where a ``Tensor.to`` call sends its tensor: True the device, False the host, None
    (only a dtype) where it is."""
    dest = kwargs.get("device")
    if dest is None:
        dest = next((a for a in args[1:] if isinstance(a, (str, torch.device, torch.Tensor))), None)
    if dest is None:
        return None
    if isinstance(dest, torch.Tensor):
        return _on(dest)
    return torch.device(dest) == SIMULATED


class DeviceAudit(TorchFunctionMode):
    """Simulate a device and record what crosses to and from it (see the module's text).

    ``events``: Counter of (kind, where) -> calls; ``bytes``: Counter of (kind, where) ->
    bytes moved (read, for a mix). Use as a context manager around the code under audit."""

    def __init__(self, scalar_max: int = 64):
        super().__init__()
        self.scalar_max = scalar_max
        self.events: Counter = Counter()
        self.bytes: Counter = Counter()
        self._quiet = 0

    # -- what the test or check sets up --------------------------------------------------
    def place(self, *objs):
        """Put modules (their parameters and buffers) and tensors on the device, as
        ``.to(device)`` would; returns the first object."""
        for obj in objs:
            if isinstance(obj, torch.nn.Module):
                for t in list(obj.parameters()) + list(obj.buffers()):
                    _tag(t)
            else:
                _tag(obj)
        return objs[0] if objs else None

    def __enter__(self):
        # the CPU rasterizer stands in for nvdiffrast: its fragments are on the device
        import mvcap.render as render

        self._rasterizer = render._rasterize_cpu
        render._rasterize_cpu = self.on_device(self._rasterizer)
        return super().__enter__()

    def __exit__(self, *exc):
        import mvcap.render as render

        render._rasterize_cpu = self._rasterizer
        return super().__exit__(*exc)

    def on_device(self, fn: Callable) -> Callable:
        """``fn`` as if it ran on the device: not audited inside, its tensors on the device
        (e.g. the CPU rasterizer standing in for nvdiffrast)."""

        def wrapped(*args, **kwargs):
            self._quiet += 1
            try:
                return _tag(fn(*args, **kwargs))
            finally:
                self._quiet -= 1

        return wrapped

    # -- what it found -------------------------------------------------------------------
    def of_kind(self, kind: str) -> dict[str, int]:
        """where -> calls, for one kind of event."""
        return {w: n for (k, w), n in self.events.items() if k == kind}

    def report(self) -> str:
        """One line per (kind, place): calls and bytes moved."""
        rows = sorted(self.events.items(), key=lambda kv: (kv[0][0], -kv[1]))
        return "\n".join(f"{k:8s} {n:6d} calls {self.bytes[(k, w)]:12d} bytes  {w}" for (k, w), n in rows)

    def _record(self, kind: str, x) -> None:
        key = (kind, _where())
        self.events[key] += 1
        self.bytes[key] += _size(x)[1]

    def _cross(self, src, to_device: bool) -> None:
        """Record ``src`` (a tensor, an array, a list) going to the device (or the host)."""
        if isinstance(src, torch.Tensor) and _on(src):
            if not to_device:
                self._record("download" if src.numel() > self.scalar_max else "sync", src)
        elif to_device and _size(src)[0] > self.scalar_max:
            self._record("upload", src)

    def _moved(self, out: torch.Tensor, src, to_device: bool) -> torch.Tensor:
        self._cross(src, to_device)
        return _tag(_alias(out, src), to_device)

    # -- the mode ------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._quiet:
            return out
        if getattr(func, "__self__", None) is _T.device:  # the .device of a tensor
            return SIMULATED if _on(args[0]) else out
        if func in _NUMPY:
            if _on(args[0]):
                self._record("error", args[0])
            return out
        if func in _SCALARS:
            if _on(args[0]):
                self._record("sync", args[0])
            return out
        if func is _T.tolist:
            self._cross(args[0], False)
            return out
        if func is _T.cpu or func is _T.cuda:
            return self._moved(out, args[0], func is _T.cuda)
        if func is _T.to:
            dest = _target(args, kwargs)
            return _tag(out, _on(args[0])) if dest is None else self._moved(out, args[0], dest)
        ins = [*_tensors(args), *_tensors(kwargs)]
        on = [t for t in ins if _on(t)]
        if func in _FACTORIES:
            if kwargs.get("device") is None:  # where the data is, else the host
                return _tag(out, bool(on))
            data = args[0] if args and func in (torch.tensor, torch.as_tensor) else None
            return self._moved(out, data, torch.device(kwargs["device"]) == SIMULATED)
        if on:
            host = [t for t in ins if not _on(t) and t.dim() > 0]
            if host:
                self._record("mixed", host)
            _tag(out)
        return out
