"""Refinement on a device: resolve_device, the device audit, and the device-resident loop
checked on the CPU against the host path (see mvcap.devices)."""

import copy
import dataclasses
import re

import numpy as np
import pytest
import torch

from mvcap.capture import Session
from mvcap.devices import SIMULATED, DeviceAudit, resolve_device
from mvcap.errors import MvcapError
from mvcap.fit import FitConfig
from mvcap.refine import RefineConfig, estimate_appearance, frame_evidence, load_frame_inputs, refine_frame


def test_resolve_device_says_what_is_wrong():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MvcapError, match="'cpu', 'cuda', 'cuda:N' or 'auto'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MvcapError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        RefineConfig(device="gpu")


def test_the_audit_sees_every_crossing():
    lin = torch.nn.Linear(3, 3)
    with DeviceAudit() as audit:
        audit.place(lin)
        assert lin.weight.device == SIMULATED
        x = torch.zeros(100, 3, device=lin.weight.device)  # made on the device: no crossing
        y = lin(x)
        y.sum().backward()  # gradients of device parameters are on the device
        (lin.weight.grad * 2 + lin.weight).sum()
        host = torch.ones(100, 3)  # no device given: the host
        assert host.device == torch.device("cpu") and y.device == SIMULATED
        y + host  # mixed
        float(y[0, 0].detach())  # sync
        y.detach().cpu()  # download
        y.detach().to("cpu").tolist()  # download, then a host read
        torch.as_tensor(np.ones(1000), device=SIMULATED)  # upload
        host.to(SIMULATED)  # upload
        np.asarray(y.detach())  # numpy of a device tensor: raises on CUDA
        audit.on_device(lambda t: t * 2)(host)  # stands in for device code: not audited
    kinds = {k: sum(n for (kk, _), n in audit.events.items() if kk == k) for k, _ in audit.events}
    assert kinds == {"mixed": 1, "sync": 1, "download": 2, "upload": 2, "error": 1}, audit.report()
    assert all(w == "outside mvcap" for _, w in audit.events)
    assert not hasattr(host, "_mvcap_on_device") or not host._mvcap_on_device  # a view was moved, not host


def _where(audit: DeviceAudit, kind: str) -> dict[str, int]:
    """file + function (no line) -> bytes moved, for one kind of event."""
    out: dict[str, int] = {}
    for (k, w), n in audit.bytes.items():
        if k == kind:
            key = re.sub(r":\d+", "", w)
            out[key] = out.get(key, 0) + n
    return out


def _photos_bytes(path) -> int:
    with Session.open(path) as s:
        return load_frame_inputs(s, 0).photos.nbytes


def _resident(model, path, predictor_name, cfg, evidence=False, **learned):
    """Refine frame 0 of ``path`` on the simulated device and on the host: (audit, device
    result, host result)."""
    with Session.open(path) as s:
        x = load_frame_inputs(s, 0)
        appearance = estimate_appearance(model, s.subject)
        ev = frame_evidence(s, 0, x.rig, cfg.cues) if evidence else None
        definition = None
        if evidence:
            from mvcap.keypoints import keypoint_set

            definition = keypoint_set(s.keypoint_format).definition(model)
    if predictor_name == "learned":
        from mvcap.nets.predictor import LearnedPredictor

        # the plain network: a flow-prior one (the default) runs OpenCV's flow on the host
        make = lambda dev: LearnedPredictor.load("lite", device=dev, **learned)  # noqa: E731
    else:
        from mvcap.refine import make_predictor

        make = lambda dev: make_predictor(predictor_name, cfg)  # noqa: E731
    host = refine_frame(model, x.rig, x.photos, x.init, make("cpu"), cfg, appearance, None, ev, definition)
    on_device = copy.deepcopy(model)
    predictor = make(SIMULATED)
    with DeviceAudit() as audit:
        audit.place(on_device, getattr(predictor, "net", torch.nn.Module()))
        photos = torch.as_tensor(x.photos, device=SIMULATED)
        dev = refine_frame(on_device, x.rig, photos, x.init, predictor, cfg, appearance, None, ev, definition)
    return audit, dev, host


FAST = RefineConfig(outer_iterations=2, fit=FitConfig(iterations=10), frame_batch=1)


def test_the_learned_loop_stays_on_the_device(body_model, tiny_session_path):
    """Photos, render, render passes, crops, network, fields, splat and fit: on the device.
    What comes back is the fit's start and result (a body's parameters) and scalars."""
    cfg = dataclasses.replace(FAST, predictor="learned")
    audit, dev, host = _resident(body_model, tiny_session_path, "learned", cfg)
    report = audit.report()
    assert not audit.of_kind("mixed") and not audit.of_kind("error"), report
    downloads = _where(audit, "download") | _where(audit, "sync")
    assert set(_where(audit, "download")) <= {"mvcap/body.py _as_numpy", "mvcap/refine.py _refine_steps"}, report
    assert sum(downloads.values()) < 8000, report  # no image, field or mesh comes back
    uploads = _where(audit, "upload")
    texture = uploads.pop("mvcap/refine.py <dictcomp>", 0)  # Appearance.to: the texture, once a frame
    assert texture > 0 and uploads.pop("outside mvcap") == _photos_bytes(tiny_session_path), report
    assert sum(uploads.values()) < 8000, report  # constants and the fit's start, nothing per pixel
    assert dev.status == host.status == "done"
    np.testing.assert_allclose(dev.pose_rotvecs, host.pose_rotvecs, atol=2e-3)
    np.testing.assert_allclose(dev.transl, host.transl, atol=1e-3)


def test_the_coarse_to_fine_pass_hands_its_field_to_the_device(body_model, tiny_session_path, monkeypatch):
    """The coarse-to-fine pass (opt-in) warps on the host: its request comes down and its
    field goes up, to the device (nothing mixes), with the host's results."""
    import mvcap.nets.predictor as P

    warps = []
    real = P._warp
    monkeypatch.setattr(P, "_warp", lambda *a: warps.append(1) or real(*a))
    cfg = dataclasses.replace(FAST, predictor="learned", learned_fine_px=1.0)
    audit, dev, host = _resident(body_model, tiny_session_path, "learned", cfg, fine_px=1.0)
    assert warps  # the second pass ran
    assert not audit.of_kind("mixed") and not audit.of_kind("error"), audit.report()
    np.testing.assert_allclose(dev.pose_rotvecs, host.pose_rotvecs, atol=2e-3)


def test_host_stages_say_where_they_copy(body_model, detected_session_path):
    """Flow (OpenCV) and the safeguards' checks run on the host: their copies are theirs, and
    nothing mixes host and device tensors or calls numpy() on a device tensor."""
    cfg = dataclasses.replace(FAST, predictor="flow")
    audit, dev, host = _resident(body_model, detected_session_path, "flow", cfg, evidence=True)
    report = audit.report()
    assert not audit.of_kind("mixed") and not audit.of_kind("error"), report
    files = {w.split()[0] for w in _where(audit, "download")}
    assert files <= {"mvcap/displace.py", "mvcap/evidence.py", "mvcap/cues.py", "mvcap/body.py",
                     "mvcap/refine.py"}, report  # fmt: skip
    assert dev.status == host.status
    np.testing.assert_allclose(dev.pose_rotvecs, host.pose_rotvecs, atol=2e-3)


def test_frames_refined_together_stay_on_the_device(body_model, tiny_session_path, caplog):
    """The batched fit of several frames (refine_frames) on the device: no crossing, no
    fallback to frame-by-frame fits, the host's results."""
    from mvcap.nets.predictor import LearnedPredictor
    from mvcap.refine import FrameInput, refine_frames

    cfg = dataclasses.replace(FAST, predictor="learned")
    with Session.open(tiny_session_path) as s:
        inputs = [load_frame_inputs(s, t) for t in range(2)]
        appearance = estimate_appearance(body_model, s.subject)
    host = refine_frames(body_model, inputs[0].rig, [FrameInput(x.photos, x.init) for x in inputs],
                         LearnedPredictor.load("lite", device="cpu"), cfg, appearance)  # fmt: skip
    on_device, predictor = copy.deepcopy(body_model), LearnedPredictor.load("lite", device=SIMULATED)
    with DeviceAudit() as audit:
        audit.place(on_device, predictor.net)
        frames = [FrameInput(torch.as_tensor(x.photos, device=SIMULATED), x.init) for x in inputs]
        dev = refine_frames(on_device, inputs[0].rig, frames, predictor, cfg, appearance)
    assert not audit.of_kind("mixed") and not audit.of_kind("error"), audit.report()
    assert "one by one" not in caplog.text
    for d, h in zip(dev, host):
        assert d.status == h.status == "done"
        np.testing.assert_allclose(d.pose_rotvecs, h.pose_rotvecs, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_the_loop_on_cuda_matches_the_host(body_model, tiny_session_path):
    """On a real GPU: RefineConfig.device = "cuda" refines as the host does (nvdiffrast
    rasterizes when installed, so results agree up to its 0.07 % of differing pixels)."""
    from mvcap.refine import make_predictor, model_on_device

    results = {}
    for device in ("cpu", "cuda"):
        cfg = dataclasses.replace(FAST, predictor="learned", device=device)
        model = model_on_device(body_model, device)
        with Session.open(tiny_session_path) as s:
            x = load_frame_inputs(s, 0)
            appearance = estimate_appearance(model, s.subject)
        results[device] = refine_frame(model, x.rig, x.photos, x.init, make_predictor("learned", cfg), cfg, appearance)
    assert results["cuda"].status == results["cpu"].status == "done"
    np.testing.assert_allclose(results["cuda"].pose_rotvecs, results["cpu"].pose_rotvecs, atol=0.02)
    np.testing.assert_allclose(results["cuda"].transl, results["cpu"].transl, atol=0.005)


def test_render_windows_crop_tensors_as_arrays(body_model, tiny_session_path):
    """ViewWindows.crop of a tensor (on its device) equals OpenCV's crop of the array, at the
    native size and shrunk (area resize: at most one level apart where OpenCV rounds a tie)."""
    from mvcap.refine import view_windows

    with Session.open(tiny_session_path) as s:
        x = load_frame_inputs(s, 0)
    rig = x.rig.without_distortion()
    with torch.no_grad():
        vertices = body_model(**x.init.to_torch()).vertices[0]
    for max_side in (0, 37):
        win = view_windows(rig, vertices, max_side)
        want = win.crop(x.photos)
        got = win.crop(torch.as_tensor(x.photos))
        assert got.dtype == torch.uint8 and tuple(got.shape) == want.shape
        assert np.abs(got.numpy().astype(int) - want.astype(int)).max() <= 1
