"""Training samples for the displacement network, generated on the fly.

One sample = one person seen by one camera (sec. 3.1 / 4 of the refinement paper, with
the synthetic studio of :mod:`mvcap.synth` standing in for the paper's datasets):

1. a subject (shape + procedural clothing texture, :func:`mvcap.synth.make_subject`) and a
   camera with its studio background (:func:`mvcap.synth.make_ring_rig`,
   :func:`mvcap.synth.make_studio`), drawn from fixed pools (cached per worker process);
2. a ground-truth pose (:func:`mvcap.motions.sample_poses`) standing on the floor near the
   capture centre (sometimes far off it, so the body leaves the frame);
3. the photo: :func:`mvcap.synth.render_frame` (key/fill lights drawn per sample,
   exposure, white balance, vignetting, blur, sensor noise) over the studio background;
4. a second estimate, like a regressor's (:func:`mvcap.motions.perturb_like_regressor`,
   error magnitude drawn per sample), or -- with ``gt_pose_prob`` -- the true pose with
   perturbed shape and root ("camera"), to learn fine displacements;
5. the estimate's render passes (textured RGB, depth, normals, template coordinates,
   mask), with the paper's appearance augmentations (Table 3) on the texture the render
   uses: pixel noise, brightness/colour changes, blur, occasionally a wrong subject's
   texture or none, and a changed render light;
6. the target field (eq. 1-2, :class:`mvcap.displace.OraclePredictor`);
7. a square crop around the *rendered* person (:func:`~.displacement.crop_window`), the
   same window for photo, passes and target, resampled to S x S exactly as
   :class:`~.predictor.LearnedPredictor` does at inference time; with ``tile_prob``, a part
   of that window instead (:func:`~.displacement.tile_window`), as the coarse-to-fine pass
   sees it.

Every sample is a pure function of ``(seed, index)``; the subject/camera pools are
functions of ``(seed, id)``. Training uses ``DataConfig.seed``, validation
``DataConfig.val_seed`` (unseen subjects, cameras, backgrounds and poses).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .augment import LOOSE_PATCHES, LOOSE_SIZE, chance
from .displacement import (
    CropWindow,
    NetConfig,
    crop_passes,
    crop_passes_tensor,
    crop_resize,
    crop_resize_tensor,
    crop_window,
    encode_photo,
    encode_render,
    encode_render_tensor,
    tile_window,
)

__all__ = [
    "DataConfig",
    "SampleGenerator",
    "DisplacementDataset",
    "StepBatchSampler",
    "make_loader",
    "collate",
]

_SURFACE_PASSES = ("rgb", "depth", "normal", "template")


@dataclass(frozen=True)
class DataConfig:
    """How training samples are made (TOML section ``[data]``). Ranges are (lo, hi), uniform.

    seed / val_seed: the training and validation streams (and their subject/camera pools).
    num_val: size of the fixed validation split.
    image_size: (width, height) of the full photo before cropping.
    num_subjects / num_cameras: pool sizes (textures and studio backgrounds are cached per
      worker process); texture_size: procedural texture resolution.
    radius_m / height_m / hfov_deg: camera placement and field of view.
    position_jitter_m: root's horizontal offset from the centre; far_prob / far_jitter_m:
      occasionally much further, so parts of the body leave the image.
    pose_style: "varied" or "mild" (see :func:`mvcap.motions.sample_poses`).
    error_scale: multiplies the default regressor-like error (per-joint 5-15 deg, global
      5 deg, root 4 cm) per sample; betas_std: shape error of the estimate.
    gt_pose_prob: estimate = true pose with perturbed shape (gt_pose_betas_std) and root
      (gt_pose_transl_std_m, gt_pose_global_deg).
    tex_noise_prob / tex_noise_std: pixel-wise Gaussian texture noise (8-bit levels);
    brightness_prob / brightness_std: a global brightness offset (levels) plus per-channel
      gains (colour_gain_std); tex_blur_prob / tex_blur_sigma: texture blur (texels);
    wrong_texture_prob: another subject's texture; no_texture_prob: plain grey.
    render_light_prob: the render uses a random light instead of the default headlight.
    photo_*: image formation of the photo (see :class:`mvcap.synth.SceneConfig`).
    What real footage adds (:mod:`~.augment`; all off by default, so older configs make the
    same samples): photo_jpeg_prob / photo_jpeg_quality: compression; photo_motion_blur_prob /
    photo_motion_blur_px: a blur streak (full-image px); bystander_prob /
    bystander_distance_m: another person in the shot, in front of or behind the subject;
    loose_prob / loose_patches / loose_size: hair and loose clothing beyond the silhouette
    (patch size x the person's height); clutter_prob / clutter_shapes / clutter_size: objects
    behind the people (size x the image height); occluder_prob / occluder_size: one in front.
    tile_prob / tile_zoom / tile_error_scale: instead of the whole-body window, a tile of it
    ``zoom`` times smaller around a random rendered pixel, so the network learns the
    coarse-to-fine pass's resolution (``learned_fine_px``: at most ``learned_max_crop`` / S =
    2 times finer); its estimate errs by ``tile_error_scale`` (in place of ``error_scale``),
    the small residual that pass sees after the whole-body pass.
    min_mask_px: resample when the estimate covers fewer full-image pixels than this.
    """

    seed: int = 0
    val_seed: int = 9_000_001
    num_val: int = 64
    image_size: tuple[int, int] = (256, 256)
    num_subjects: int = 256
    num_cameras: int = 96
    texture_size: int = 256
    radius_m: tuple[float, float] = (2.5, 5.0)
    height_m: tuple[float, float] = (0.8, 2.4)
    hfov_deg: tuple[float, float] = (38.0, 56.0)
    position_jitter_m: float = 0.4
    far_prob: float = 0.08
    far_jitter_m: float = 1.5
    pose_style: str = "varied"
    error_scale: tuple[float, float] = (0.2, 1.6)
    betas_std: tuple[float, float] = (0.0, 0.3)
    gt_pose_prob: float = 0.2
    gt_pose_betas_std: tuple[float, float] = (0.1, 0.5)
    gt_pose_transl_std_m: float = 0.02
    gt_pose_global_deg: float = 2.0
    tex_noise_prob: float = 0.5
    tex_noise_std: tuple[float, float] = (0.0, 30.0)
    brightness_prob: float = 0.5
    brightness_std: float = 25.0
    colour_gain_std: float = 0.08
    tex_blur_prob: float = 0.5
    tex_blur_sigma: tuple[float, float] = (0.3, 1.5)
    wrong_texture_prob: float = 0.05
    no_texture_prob: float = 0.03
    render_light_prob: float = 0.3
    photo_noise_std: tuple[float, float] = (0.5, 4.0)
    photo_shot_noise: float = 0.6
    photo_blur_prob: float = 0.5
    photo_blur_sigma_px: tuple[float, float] = (0.3, 1.2)
    photo_exposure: tuple[float, float] = (0.75, 1.25)
    photo_white_balance_std: float = 0.06
    photo_vignetting: tuple[float, float] = (0.0, 0.3)
    photo_ambient: tuple[float, float] = (0.3, 0.55)
    photo_key_light: tuple[float, float] = (0.4, 0.75)
    photo_fill_light: tuple[float, float] = (0.05, 0.3)
    photo_jpeg_prob: float = 0.0
    photo_jpeg_quality: tuple[int, int] = (25, 90)
    photo_motion_blur_prob: float = 0.0
    photo_motion_blur_px: tuple[float, float] = (1.0, 5.0)
    bystander_prob: float = 0.0
    bystander_distance_m: tuple[float, float] = (0.6, 2.0)
    loose_prob: float = 0.0
    loose_patches: tuple[int, int] = LOOSE_PATCHES
    loose_size: tuple[float, float] = LOOSE_SIZE
    clutter_prob: float = 0.0
    clutter_shapes: tuple[int, int] = (2, 8)
    clutter_size: tuple[float, float] = (0.05, 0.3)
    occluder_prob: float = 0.0
    occluder_size: tuple[float, float] = (0.1, 0.35)
    tile_prob: float = 0.0
    tile_zoom: tuple[float, float] = (1.5, 2.0)
    tile_error_scale: tuple[float, float] = (0.05, 0.4)
    min_mask_px: int = 300

    def __post_init__(self):
        if self.pose_style not in ("varied", "mild"):
            raise ValueError(f"data.pose_style must be 'varied' or 'mild', got {self.pose_style!r}")
        if self.num_subjects < 2 or self.num_cameras < 1 or self.num_val < 1:
            raise ValueError("data.num_subjects must be >= 2, num_cameras and num_val >= 1")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0 <= v <= 1:
                raise ValueError(f"data.{f.name} is a probability, in [0, 1]; got {v}")
            if isinstance(v, tuple) and f.name != "image_size" and not v[0] <= v[1]:
                raise ValueError(f"data.{f.name} is a range (lo, hi) with lo <= hi; got {list(v)}")
        if not self.tile_zoom[0] >= 1:
            raise ValueError(f"data.tile_zoom must be >= 1 (a tile is part of the window); got {list(self.tile_zoom)}")
        if self.seed == self.val_seed:
            raise ValueError(
                "data.seed and data.val_seed must differ (the validation split must be unseen)"
            )


def _u(rng: np.random.Generator, lohi) -> float:
    lo, hi = lohi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


@functools.lru_cache(maxsize=8)
def _identity_maps(W: int, H: int):
    mx, my = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    return mx, my


class SampleGenerator:
    """Makes samples of one stream (``seed``); caches subjects and cameras lazily.

    ``sample(index)`` -> dict of tensors: photo (3, S, S) in [-1, 1]; render (C_r, S, S)
    (see :func:`~.displacement.encode_render`; a flow-prior network's ends with the flow's
    channels); target (2, S, S) true displacement in crop pixels / S (a flow-prior network's:
    minus the flow); mask (1, S, S) {0, 1} rendered pixels; window (scalar) the crop window's
    side in full-image pixels (target * window = full-image pixels).
    """

    def __init__(self, data: DataConfig, net: NetConfig, seed: int):
        self.cfg = data
        self.net = net
        self.seed = int(seed)
        self._subjects: dict[int, SimpleNamespace] = {}
        self._cameras: dict[int, tuple] = {}
        self._model = None
        self._flow_predictor = None

    def _flow(self, request):
        """Refinement's default optical flow on ``request`` (made on first use: OpenCV's
        flow object does not travel to loader workers)."""
        from mvcap.displace import FlowPredictor

        if self._flow_predictor is None:
            self._flow_predictor = FlowPredictor()
        return self._flow_predictor(request)

    # -- pools ---------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            from mvcap.body import load_body_model

            self._model = load_body_model()
        return self._model

    def subject(self, sid: int) -> SimpleNamespace:
        if sid not in self._subjects:
            from mvcap import synth

            rng = np.random.default_rng([self.seed, 1, sid])
            subj = synth.make_subject(
                rng,
                self.model,
                f"train{sid}",
                synth.SubjectConfig(texture_size=self.cfg.texture_size),
            )
            self._subjects[sid] = SimpleNamespace(
                betas=np.asarray(subj.betas, np.float64), texture=np.array(subj.texture)
            )
        return self._subjects[sid]

    def _scene_config(self):
        from mvcap import synth

        c = self.cfg
        return synth.SceneConfig(
            noise_std=c.photo_noise_std,
            shot_noise=c.photo_shot_noise,
            blur_prob=c.photo_blur_prob,
            blur_sigma_px=c.photo_blur_sigma_px,
            exposure=c.photo_exposure,
            white_balance_std=c.photo_white_balance_std,
            vignetting=c.photo_vignetting,
            ambient=c.photo_ambient,
            key_light=c.photo_key_light,
            fill_light=c.photo_fill_light,
        )

    def camera(self, cid: int):
        """(one-camera pinhole rig, its studio) for camera id ``cid``."""
        if cid not in self._cameras:
            from mvcap import synth

            c = self.cfg
            rng = np.random.default_rng([self.seed, 2, cid])
            rc = synth.RigConfig(
                num_cameras=1,
                radius_m=c.radius_m,
                height_m=c.height_m,
                hfov_deg=c.hfov_deg,
                image_size=c.image_size,
                distortion_k1=(0.0, 0.0),
                distortion_k2=(0.0, 0.0),
                tangential_p=(0.0, 0.0),
            )
            rig = synth.make_ring_rig(rc, rng)
            studio = synth.make_studio(rig, rng, self._scene_config())
            self._cameras[cid] = (rig, studio)
        return self._cameras[cid]

    # -- one sample ----------------------------------------------------------------------
    def sample(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, 0, int(index)])
        for _ in range(20):
            out = self._attempt(rng)
            if out is not None:
                return out
        raise RuntimeError(
            f"could not make a sample with a visible person for index {index}; "
            "check the camera ranges"
        )

    def _texture_for_render(self, rng, sid: int) -> np.ndarray:
        c = self.cfg
        if rng.random() < c.no_texture_prob:
            return np.full((8, 8, 3), 0.7, np.float32)
        if rng.random() < c.wrong_texture_prob:
            other = int(rng.integers(c.num_subjects - 1))
            sid = other + (other >= sid)
        tex = self.subject(sid).texture.astype(np.float32)
        if rng.random() < c.tex_blur_prob:
            tex = cv2.GaussianBlur(tex, (0, 0), _u(rng, c.tex_blur_sigma) * tex.shape[0] / 256.0)
        if rng.random() < c.brightness_prob:
            tex = tex * np.clip(1 + rng.normal(0, c.colour_gain_std, 3), 0.6, 1.4).astype(
                np.float32
            )
            tex = tex + np.float32(rng.normal(0, c.brightness_std))
        if rng.random() < c.tex_noise_prob:
            tex = tex + rng.standard_normal(tex.shape).astype(np.float32) * np.float32(
                _u(rng, c.tex_noise_std)
            )
        return np.clip(tex / 255.0, 0, 1).astype(np.float32)

    def _render_light(self, rng):
        from mvcap.render import Light

        if rng.random() >= self.cfg.render_light_prob:
            return Light()
        d = np.array([0.0, 0.0, -1.0]) + rng.normal(0, 0.6, 3)
        if d[2] > -0.2:
            d[2] = -0.2
        return Light(
            ambient=float(rng.uniform(0.2, 0.6)),
            diffuse=float(rng.uniform(0.3, 0.8)),
            direction_cam=tuple(float(x) for x in d),
        )

    def _attempt(self, rng) -> dict | None:
        from mvcap import motions as M
        from mvcap import synth
        from mvcap.displace import OraclePredictor, PredictRequest
        from mvcap.render import render

        c, model = self.cfg, self.model
        sid = int(rng.integers(c.num_subjects))
        cid = int(rng.integers(c.num_cameras))
        subj = self.subject(sid)
        rig, studio = self.camera(cid)
        cam = rig[0]

        # ground truth
        pose = M.sample_poses(rng, 1, c.pose_style)
        jitter = c.far_jitter_m if rng.random() < c.far_prob else c.position_jitter_m
        transl = np.zeros((1, 3))
        transl[:, [0, 2]] = rng.uniform(-1, 1, (1, 2)) * jitter
        betas = subj.betas[None]
        transl = M.place_on_floor(model, pose, betas, transl)

        # the second estimate (a tile's is the small residual the coarse-to-fine pass sees)
        tile = chance(rng, c.tile_prob)
        if rng.random() < c.gt_pose_prob:
            pcfg = M.PerturbConfig(
                joint_deg=(0.0, 0.0),
                global_deg=c.gt_pose_global_deg,
                transl_std_m=c.gt_pose_transl_std_m,
                betas_std=_u(rng, c.gt_pose_betas_std),
            )
        else:
            s = _u(rng, c.tile_error_scale if tile else c.error_scale)
            pcfg = M.PerturbConfig(
                joint_deg=(5.0 * s, 15.0 * s),
                global_deg=5.0 * s,
                transl_std_m=0.04 * s,
                betas_std=_u(rng, c.betas_std),
            )
        est_pose, est_transl, est_betas = M.perturb_like_regressor(
            rng, pose, transl, betas, cfg=pcfg, R_world2cam=cam.R_world2cam
        )
        with torch.no_grad():
            f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
            gt_v = model(f32(pose), f32(betas), f32(transl)).vertices[0]
            est_v = model(f32(est_pose), f32(est_betas), f32(est_transl)).vertices[0]

        # the estimate's render (checked first: cheap, and decides whether to retry)
        tex = self._texture_for_render(rng, sid)
        frags, passes = render(
            rig,
            est_v,
            model.faces,
            template_vertices=model.template_vertices()[0],
            texture=torch.from_numpy(tex),
            uvs=model.uvs,
            uv_faces=model.uv_faces,
            light=self._render_light(rng),
            passes=("rgb", "depth", "normal", "template", "mask"),
            backend="cpu",
        )
        mask = frags.mask[0].numpy()
        if int(mask.sum()) < c.min_mask_px:
            return None

        # the photo
        az, el = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(25, 75))
        key_dir = np.array([math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)])
        az2, el2 = az + np.pi + rng.uniform(-0.8, 0.8), np.deg2rad(rng.uniform(15, 55))
        fill_dir = np.array(
            [math.cos(el2) * math.cos(az2), math.sin(el2), math.cos(el2) * math.sin(az2)]
        )
        lit = dataclasses.replace(
            studio,
            key_dir=key_dir,
            fill_dir=fill_dir,
            ambient=_u(rng, c.photo_ambient),
            key=_u(rng, c.photo_key_light),
            fill=_u(rng, c.photo_fill_light),
        )
        looks = synth._sample_looks(rng, 1, self._scene_config())
        photos, person = self._photo(rng, rig, subj, gt_v, lit, looks)
        photos = self._real_world(rng, photos, person[0] > 0, sid, rig, lit, looks, transl)

        # target field, eq. 1-2
        req = PredictRequest(photos, passes, frags, rig, est_v, model.faces)
        flow = OraclePredictor(gt_v)(req).flow[0].numpy()
        window = None
        if tile:
            whole = crop_window(mask, self.net.crop_scale)
            window = tile_window(mask, max(int(round(whole.size / _u(rng, c.tile_zoom))), 16), rng)
        prior = None
        if self.net.flow_prior:  # what refinement's flow makes of this photo, at this resolution
            d = self._flow(req)
            prior = (d.flow[0].numpy(), d.confidence[0].numpy())
        return crop_sample(self.net, photos[0], passes.images[0].numpy(), passes.channels, mask, flow, window, prior)

    def _photo(self, rng, rig, subj, vertices: torch.Tensor, lit, looks):
        """The photo of a body (vertices (N, 3) world metres) in the one-camera ``rig``:
        ((1, H, W, 3) uint8, its silhouette (1, H, W) uint8)."""
        from mvcap import synth

        W, H = rig[0].image_size
        photos, person, _ = synth.render_frame(
            self.model,
            rig,
            subj,
            vertices.numpy().astype(np.float64),
            lit,
            0,
            looks,
            rng,
            maps=[_identity_maps(W, H)],
            backend="cpu",  # a sample depends on (seed, index) alone, not on the machine's GPU
        )
        return photos, person

    def _real_world(self, rng, photos, person, sid: int, rig, lit, looks, transl) -> np.ndarray:
        """What real footage adds to the photo (V = 1, (1, H, W, 3) uint8; person (H, W) bool
        the subject's pixels): loose clothing, another person, clutter, an occluder, motion
        blur, compression (see :class:`DataConfig`). The subject's body does not move, so the
        target stays as it was."""
        from mvcap import motions as M

        from . import augment as A

        c, model = self.cfg, self.model
        photo = photos[0].astype(np.float32)
        changed = False
        front = cv2.GaussianBlur(person.astype(np.float32), (0, 0), 0.5)  # what clutter goes behind
        if chance(rng, c.loose_prob):
            lo, hi = c.loose_patches
            photo, added = A.loose_layer(photo, person, rng, int(rng.integers(lo, hi + 1)), c.loose_size)
            front, changed = np.maximum(front, added), True
        if chance(rng, c.bystander_prob):
            other = int(rng.integers(c.num_subjects - 1))
            other += other >= sid
            subj = self.subject(other)
            pose = M.sample_poses(rng, 1, c.pose_style)
            a, d = rng.uniform(0, 2 * np.pi), _u(rng, c.bystander_distance_m)
            t = transl + np.array([[d * math.cos(a), 0.0, d * math.sin(a)]])
            t = M.place_on_floor(model, pose, subj.betas[None], t)
            with torch.no_grad():
                f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
                v = model(f32(pose), f32(subj.betas[None]), f32(t)).vertices[0]
            img, mask = self._photo(rng, rig, subj, v, lit, looks)
            alpha = cv2.GaussianBlur(mask[0].astype(np.float32), (0, 0), 0.5)
            centre = rig[0].center_world
            if np.linalg.norm(t[0] - centre) > np.linalg.norm(transl[0] - centre):
                alpha *= 1 - front  # the other person stands behind the subject
            photo = A.over(photo, img[0].astype(np.float32), alpha)
            front, changed = np.maximum(front, alpha), True
        textures = ()
        if c.clutter_prob > 0 or c.occluder_prob > 0:
            textures = (self.subject(int(rng.integers(c.num_subjects))).texture,)
        if chance(rng, c.clutter_prob):
            lo, hi = c.clutter_shapes
            photo = A.clutter(photo, rng, int(rng.integers(lo, hi + 1)), c.clutter_size, textures, behind=front)
            changed = True
        if chance(rng, c.occluder_prob):
            photo = A.clutter(photo, rng, 1, c.occluder_size, textures)
            changed = True
        if changed:  # the added layers get the camera's noise too
            photo = photo + rng.normal(0, _u(rng, c.photo_noise_std), photo.shape).astype(np.float32)
        if chance(rng, c.photo_motion_blur_prob):
            photo = A.motion_blur(photo, _u(rng, c.photo_motion_blur_px), float(rng.uniform(0, np.pi)))
        if chance(rng, c.photo_jpeg_prob):
            lo, hi = c.photo_jpeg_quality
            photo = A.compress(photo, int(rng.integers(lo, hi + 1)))
        return np.clip(np.rint(photo), 0, 255).astype(np.uint8)[None]


_NEEDS_PRIOR = "a flow-prior network takes the optical flow to the photo: pass prior=(flow, confidence)"


def crop_sample(
    net: NetConfig,
    photo: np.ndarray,
    pass_images: np.ndarray,
    channels,
    mask: np.ndarray,
    flow: np.ndarray | None = None,
    window: CropWindow | None = None,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The network's view of one full image: photo (H, W, 3) uint8, render passes
    (H, W, C) with ``channels`` (must hold the passes the net takes), mask (H, W) bool,
    optional true flow (H, W, 2) in pixels; ``window``: the part of the image to crop
    (default: the network's window around the mask, :func:`crop_window`); ``prior``: for a
    flow-prior network (``net.flow_prior``), the optical flow (H, W, 2) in pixels and its
    confidence (H, W), appended to the render and taken off the target. Returns the
    tensors of :class:`SampleGenerator` plus ``x0, y0`` (the window's corner)."""
    S = net.crop_size
    win = window or crop_window(mask, net.crop_scale)
    if win is None:
        raise ValueError("the render mask is empty: nothing to crop")
    used, idx = _surface_channels(net, channels)
    # work on the part of the image inside the window only (same result, less copying)
    H, W = mask.shape
    xa, xb = max(win.x0, 0), min(win.x0 + win.size, W)
    ya, yb = max(win.y0, 0), min(win.y0 + win.size, H)
    local = CropWindow(win.x0 - xa, win.y0 - ya, win.size)
    mask = mask[ya:yb, xa:xb]
    vals, cov = crop_passes(pass_images[ya:yb, xa:xb][..., idx], mask, local, S)
    passes = _split_passes(vals, used)
    render = encode_render(passes, cov, net.render_passes)
    if net.flow_prior:
        if prior is None:
            raise ValueError(_NEEDS_PRIOR)
        both = np.concatenate([prior[0][ya:yb, xa:xb] / float(win.size), prior[1][ya:yb, xa:xb, None]], -1)
        prior_crop = torch.from_numpy(crop_passes(both, mask, local, S)[0]).permute(2, 0, 1)
        render = torch.cat([render, encode_prior(prior_crop, S)])
    out = {
        "photo": encode_photo(crop_resize(photo[ya:yb, xa:xb].astype(np.float32), local, S)),
        "render": render,
        "mask": torch.from_numpy((cov > 0.5).astype(np.float32))[None],
        "window": torch.tensor(float(win.size)),
        "x0": torch.tensor(win.x0),
        "y0": torch.tensor(win.y0),
    }
    if flow is not None:
        target, _ = crop_passes(flow[ya:yb, xa:xb] / float(win.size), mask, local, S)
        target = torch.from_numpy(target).permute(2, 0, 1)
        # a flow-prior network learns the correction to the flow
        out["target"] = (target - prior_crop[:2] if net.flow_prior else target).contiguous()
    return out


def encode_prior(prior_crop: Tensor, S: int) -> Tensor:
    """The flow prior's channels of the render input (3, S, S) from its crop (3, S, S): the
    flow in crop pixels / S (the target's units) and its confidence; the flow goes in crop
    pixels, whose values suit a convolution's input better."""
    return torch.cat([prior_crop[:2] * S, prior_crop[2:]]).float()


def _surface_channels(net: NetConfig, channels) -> tuple[list[str], list[int]]:
    """The surface passes the network takes and their channels' indices in ``channels``."""
    from mvcap.render import PASS_CHANNELS

    used = [p for p in _SURFACE_PASSES if p in net.render_passes]
    missing = [ch for p in used for ch in PASS_CHANNELS[p] if ch not in channels]
    if missing:
        raise ValueError(f"the render lacks channels {missing} that the network takes (passes {net.render_passes})")
    return used, [list(channels).index(ch) for p in used for ch in PASS_CHANNELS[p]]


def _split_passes(vals, used: list[str]) -> dict:
    """(..., C) cropped surface values -> pass name -> its channels."""
    from mvcap.render import PASS_CHANNELS

    passes, o = {}, 0
    for p in used:
        passes[p] = vals[..., o : o + len(PASS_CHANNELS[p])]
        o += len(PASS_CHANNELS[p])
    return passes


def crop_sample_tensor(net: NetConfig, photo: Tensor, pass_images: Tensor, channels, mask: Tensor, win: CropWindow,
                       prior: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`crop_sample`'s network inputs from tensors on any device, computed there: photo
    (H, W, 3) uint8, render passes (H, W, C), mask (H, W) bool, the crop window ``win``, a
    flow-prior network's ``prior`` (flow (H, W, 2) px, confidence (H, W)). Returns the
    photo and render crops (3, S, S), (C_r, S, S) float32."""
    S = net.crop_size
    used, idx = _surface_channels(net, channels)
    vals, cov = crop_passes_tensor(pass_images[..., idx], mask, win, S)
    photo_crop = crop_resize_tensor(photo, win, S)
    render = encode_render_tensor(_split_passes(vals, used), cov, net.render_passes)
    if net.flow_prior:
        if prior is None:
            raise ValueError(_NEEDS_PRIOR)
        both = torch.cat([prior[0] / float(win.size), prior[1][..., None]], -1)
        render = torch.cat([render, encode_prior(crop_passes_tensor(both, mask, win, S)[0].permute(2, 0, 1), S)])
    return encode_photo(photo_crop), render


class DisplacementDataset(Dataset):
    """Map-style dataset over one stream: ``ds[i]`` = ``SampleGenerator.sample(i)``.

    split: "train" (seed ``data.seed``, ``length`` samples, default practically unbounded)
    or "val" (seed ``data.val_seed``, ``data.num_val`` samples)."""

    def __init__(
        self, data: DataConfig, net: NetConfig, split: str = "train", length: int | None = None
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split = split
        seed = data.seed if split == "train" else data.val_seed
        self.length = int(
            length if length is not None else (data.num_val if split == "val" else 2**40)
        )
        self.gen = SampleGenerator(data, net, seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.gen.sample(index)


class StepBatchSampler:
    """Batches of indices by training step: step k gets [k*B, (k+1)*B). Starting at
    ``start_step`` makes a resumed run see exactly the data it would have seen."""

    def __init__(self, batch_size: int, start_step: int = 0, num_steps: int | None = None):
        self.batch_size = int(batch_size)
        self.start_step = int(start_step)
        self.num_steps = num_steps

    def __iter__(self):
        k = self.start_step
        while self.num_steps is None or k < self.start_step + self.num_steps:
            yield list(range(k * self.batch_size, (k + 1) * self.batch_size))
            k += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an unbounded StepBatchSampler has no length")
        return self.num_steps


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _worker_init(_worker_id: int) -> None:
    # data workers render on the CPU (numba): keep them off the GPU (no CUDA context each)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(1)
    try:
        import numba

        # numba's workqueue layer has no C++ thread pool: an OpenMP or TBB pool can abort the
        # worker ("terminate called without an active exception") when a budgeted run stops it
        numba.config.THREADING_LAYER = "workqueue"
        numba.set_num_threads(1)
    except Exception:  # pragma: no cover - numba missing or threading layer already fixed
        pass
    cv2.setNumThreads(1)


def make_loader(dataset: Dataset, batch_sampler, num_workers: int = 1, pin_memory: bool = False):
    """A DataLoader whose workers are separate (spawned) processes with one thread each,
    so data generation runs beside the training step."""
    from torch.utils.data import DataLoader

    kw = {}
    if num_workers > 0:
        kw = dict(
            multiprocessing_context="spawn",
            worker_init_fn=_worker_init,
            persistent_workers=True,
            prefetch_factor=4,
        )
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        **kw,
    )
