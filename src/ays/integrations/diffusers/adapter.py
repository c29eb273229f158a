"""diffusers adapter: an ays denoiser, noise schedule and latent data set from a diffusers pipeline.

A diffusers model (a ``UNet2DConditionModel`` or a diffusion transformer) is a
network in its own parametrisation; its scheduler's config says which one
(``prediction_type`` epsilon / v_prediction / sample, or flow matching) and holds
its noise table (``alphas_cumprod``) or flow settings. This module reads them and
builds the EDM-convention denoiser ``D(x, sigma)`` that every part of ays uses
(:class:`ays.denoisers.ModelDenoiser`), with text conditioning bound and
classifier-free guidance (:class:`ays.denoisers.CFGDenoiser`) applied the way
diffusers' pipelines apply it (on the network output, which is the same thing:
every adapter is affine in that output with the same coefficients for both
branches).

Conventions that matter when comparing with a diffusers loop:

- The EDM state is diffusers' Euler-family ``latents`` (``x0 + sigma·eps``);
  ``scheduler.scale_model_input`` is ``alpha(sigma)·x`` and the network sees the
  fractional timestep of ``sigma`` (log-sigma interpolation, as EulerDiscrete's
  custom sigmas do). Flow models see ``x/(1 + sigma) = (1 - t)·x0 + t·eps`` and
  ``t = sigma/(1 + sigma)``, times 1000 for SD3-style transformers.
- Bound prompts spread over a batch: row ``i`` is conditioned on prompt ``i mod P``. That
  suits sampling; for optimisation, data rows carry their own captions' conditioning
  (:mod:`.family`, :mod:`.data`), as the KLUB's expectation over (image, caption) needs.
- Pipelines start from ``noise · scheduler.init_noise_sigma``; for EulerDiscrete
  with ``timestep_spacing="leading"`` that is ``sqrt(sigma_max² + 1)``, not
  ``sigma_max`` (ays starts from ``noise · sigma_max``).

diffusers is imported only inside this module (optional extra ``ays[diffusers]``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...denoisers import CFGDenoiser, ModelDenoiser, prediction_name
from ...noise import EDM, DiscreteVP, Flow, NoiseSchedule
from ...validate import AysError, check_batch, check_positive
from .pipeline import require_diffusers

__all__ = [
    "ConditionedModel",
    "ContinuousEuler",
    "denoiser_from_parts",
    "denoiser_from_pipeline",
    "encode_prompts",
    "latents_from_images",
    "noise_from_scheduler",
    "prediction_from_scheduler",
    "read_latents",
]

Tensor = torch.Tensor


def _config(obj: Any) -> Mapping[str, Any]:
    return getattr(obj, "config", {}) or {}


def _is_flow(scheduler: Any) -> bool:
    return "FlowMatch" in type(scheduler).__name__ or bool(_config(scheduler).get("use_flow_sigmas", False))


# ----------------------------------------------------------------------------- scheduler -> noise, prediction


@dataclass(frozen=True)
class ContinuousEuler:
    """Euler with ``timestep_type="continuous"`` (SVD): VP-scaled inputs, timestep ``t = 0.25·log σ``.

    The EDM preconditioning with ``σ_data = 1`` (Karras et al. 2022, Table 1, ``c_noise``):
    ``x_model = x/sqrt(1 + σ²)``, ``alpha = 1/sqrt(1 + σ²)``, as diffusers' ``scale_model_input``.
    """

    sigma_min: float = 0.002
    sigma_max: float = 700.0

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.exp(4 * torch.as_tensor(t, dtype=torch.float64))

    def t(self, sigma: Tensor | float) -> Tensor:
        return 0.25 * torch.as_tensor(sigma, dtype=torch.float64).log()

    def alpha(self, sigma: Tensor | float) -> Tensor:
        return torch.rsqrt(1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)




def noise_from_scheduler(scheduler: Any) -> NoiseSchedule:
    """The ays noise schedule of a diffusers scheduler.

    - flow matching (``FlowMatch*``, or ``use_flow_sigmas``): :class:`~ays.noise.Flow`
      with the scheduler's shift (kept for reference: it shapes diffusers' default
      schedule, not the map between sigma and t) and the training range
      ``t in [1/N, 1 - 1/N]`` (``N = num_train_timesteps``);
    - EDM (``EDMEulerScheduler``): :class:`~ays.noise.EDM` with its sigma range;
    - Euler with ``timestep_type="continuous"`` and v prediction (SVD): :class:`ContinuousEuler`;
    - DDPM-style (``alphas_cumprod``): :class:`~ays.noise.DiscreteVP` of that table.
    """
    cfg = _config(scheduler)
    if _is_flow(scheduler):
        n = int(cfg.get("num_train_timesteps", 1000))
        shift = float(getattr(scheduler, "shift", None) or cfg.get("shift") or cfg.get("flow_shift") or 1.0)
        return Flow(shift=shift, sigma_min=1.0 / (n - 1), sigma_max=float(n - 1))
    if hasattr(scheduler, "precondition_noise") and "sigma_schedule" in cfg:
        return EDM(sigma_min=float(cfg["sigma_min"]), sigma_max=float(cfg["sigma_max"]))
    if cfg.get("timestep_type") == "continuous" and cfg.get("prediction_type") == "v_prediction":
        return ContinuousEuler(float(cfg.get("sigma_min") or 0.002), float(cfg.get("sigma_max") or 700.0))
    if hasattr(scheduler, "alphas_cumprod"):
        return DiscreteVP(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64))
    raise AysError(f"cannot tell the noise schedule of {type(scheduler).__name__}: it has no alphas_cumprod "
                   "and is not a flow-matching or EDM scheduler")


def prediction_from_scheduler(scheduler: Any) -> str:
    """What the model predicts, from the scheduler config: ``epsilon``, ``v``, ``x0`` or ``flow``."""
    cfg = _config(scheduler)
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    return prediction_name(str(cfg.get("prediction_type", "epsilon")))


# ----------------------------------------------------------------------------- the network with its conditioning


def _rows(value: Any, batch: int, device: torch.device) -> Any:
    """Conditioning for ``batch`` rows on ``device``: row ``i`` takes entry ``i mod P`` of a ``[P, ...]`` tensor."""
    if isinstance(value, Tensor):
        value = value.to(device)
        if value.ndim == 0 or value.shape[0] == batch:
            return value
        idx = torch.arange(batch, device=device) % value.shape[0]
        return value.index_select(0, idx)
    if isinstance(value, Mapping):
        return {k: _rows(v, batch, device) for k, v in value.items()}
    return value


class ConditionedModel(nn.Module):
    """A diffusers network called as ays' :class:`~ays.denoisers.ModelDenoiser` calls it: ``f(x, t)``.

    Binds the conditioning (``encoder_hidden_states``, ``pooled_projections``,
    ``added_cond_kwargs``, ...), spreading ``P`` prompts over any batch (row ``i``
    gets prompt ``i mod P``), passes ``x`` and ``t`` under the names the network
    takes (``sample, timestep`` for UNets, ``hidden_states=, timestep=`` for
    transformers), runs it in its own dtype and returns its output in ``x``'s.
    """

    def __init__(self, model: Callable[..., Any], cond: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not callable(model):
            raise AysError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        self.cond = dict(cond or {})
        params = list(inspect.signature(getattr(model, "forward", model)).parameters)
        # UNets take (sample, timestep, ...); transformers (hidden_states, encoder_hidden_states, ..., timestep).
        self._keyword = bool(params) and params[0] == "hidden_states"
        self._return_dict = "return_dict" in params
        self._dtype = getattr(model, "dtype", None)

    def forward(self, x: Tensor, t: Tensor, **extra: Any) -> Tensor:
        batch = x.shape[0]
        kw = {k: _rows(v, batch, x.device) for k, v in {**self.cond, **extra}.items()}
        dtype = self._dtype if isinstance(self._dtype, torch.dtype) else x.dtype
        xin = x.to(dtype)
        tin = t.to(dtype) if t.is_floating_point() else t
        if self._return_dict:
            kw["return_dict"] = False
        if self._keyword:
            out = self.model(hidden_states=xin, timestep=tin, **kw)
        else:
            out = self.model(xin, tin, **kw)
        y = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        return y.to(x.dtype)


def _time_scale(model: Any, scheduler: Any) -> float:
    """What the network's ``timestep`` is in units of the noise schedule's time.

    Discrete models take the timestep index (1); SD3-style flow transformers take
    ``1000·t`` (the scheduler's ``timesteps``); Flux-style ones take ``t`` (their
    pipelines divide by 1000 and the model multiplies back).
    """
    if not _is_flow(scheduler):
        return 1.0
    if "Flux" in type(model).__name__:
        return 1.0
    return float(_config(scheduler).get("num_train_timesteps", 1000))


def denoiser_from_parts(
    model: Callable[..., Any],
    scheduler: Any,
    *,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    prediction: str | None = None,
    time_scale: float | None = None,
) -> nn.Module:
    """An ays denoiser from a diffusers network and its scheduler (or scheduler config).

    ``cond`` / ``uncond`` are the network's conditioning keyword arguments
    (e.g. ``{"encoder_hidden_states": prompt_embeds}``; for SD3 also
    ``pooled_projections``; for SDXL ``added_cond_kwargs``), tensors of ``P`` rows
    spread over any batch. With ``guidance_scale != 1`` the result is
    ``D_u + s·(D_c - D_u)`` (:class:`~ays.denoisers.CFGDenoiser`), which needs ``uncond``.
    ``prediction`` and ``time_scale`` override what the scheduler says.
    """
    scheduler = _scheduler_instance(scheduler)
    noise = noise_from_scheduler(scheduler)
    pred = prediction_name(prediction) if prediction is not None else prediction_from_scheduler(scheduler)
    scale = _time_scale(model, scheduler) if time_scale is None else check_positive(time_scale, name="time_scale")
    guidance = float(guidance_scale)

    def make(c: Mapping[str, Any] | None) -> ModelDenoiser:
        return ModelDenoiser(ConditionedModel(model, c), noise, pred, time_scale=scale)

    if guidance == 1.0:
        return make(cond)
    if uncond is None:
        raise AysError(f"guidance_scale={guidance} needs the unconditional conditioning (uncond=, or "
                       "negative_prompt_embeds=)")
    return CFGDenoiser(make(cond), make(uncond), guidance)


def _scheduler_instance(scheduler: Any) -> Any:
    if isinstance(scheduler, Mapping):
        diffusers = require_diffusers()
        name = scheduler.get("_class_name")
        cls = getattr(diffusers, str(name), None)
        if cls is None:
            raise AysError(f"scheduler config names no known diffusers scheduler (_class_name={name!r})")
        return cls.from_config(dict(scheduler))
    return scheduler


# ----------------------------------------------------------------------------- prompts


def _network(pipe: Any) -> Any:
    for name in ("unet", "transformer"):
        net = getattr(pipe, name, None)
        if net is not None:
            return net
    raise AysError(f"{type(pipe).__name__} has neither a unet nor a transformer")


def _device(pipe: Any) -> torch.device:
    dev = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def encode_prompts(pipe: Any, prompts: Sequence[str], negative_prompt: str | Sequence[str] = ""
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(cond, uncond)`` network keyword arguments for ``prompts``, encoded by the pipeline.

    Uses the pipeline's own ``encode_prompt`` (its tokenizer(s) and text encoder(s));
    supports pipelines whose networks take ``encoder_hidden_states`` (SD 1.x/2.x),
    plus ``pooled_projections`` (SD3). Other conditioning (SDXL's size ids, Flux's
    ids and guidance) is passed with :func:`denoiser_from_parts` directly.
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise AysError("prompts must be a non-empty list of strings")
    encode = getattr(pipe, "encode_prompt", None)
    if encode is None or getattr(pipe, "tokenizer", None) is None:
        raise AysError(f"{type(pipe).__name__} cannot encode prompts here (no encode_prompt or tokenizer); "
                       "pass prompt_embeds= instead")
    params = inspect.signature(encode).parameters
    negative = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    args: dict[str, Any] = {"prompt": list(prompts), "device": _device(pipe), "num_images_per_prompt": 1,
                            "do_classifier_free_guidance": True, "negative_prompt": negative}
    for name in ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3"):
        if name in params:
            args[name] = None
    missing = [k for k in args if k not in params]
    if missing:
        raise AysError(f"{type(pipe).__name__}.encode_prompt takes no {', '.join(missing)}: use "
                       "ays.integrations.diffusers.family_of(pipe).denoiser(...) for SDXL, SD3 and Flux, or pass "
                       "prompt_embeds= (and the other conditioning) with denoiser_from_parts")
    with torch.no_grad():
        out = encode(**args)
    if not isinstance(out, tuple) or len(out) not in (2, 4):
        raise AysError(f"{type(pipe).__name__}.encode_prompt returned an unexpected value; pass prompt_embeds=")
    net = _network(pipe)
    embeds, negative_embeds = out[0], out[1]
    cond: dict[str, Any] = {"encoder_hidden_states": embeds}
    uncond: dict[str, Any] = {"encoder_hidden_states": negative_embeds}
    if len(out) == 4:
        if "pooled_projections" not in inspect.signature(net.forward).parameters:
            raise AysError(f"{type(net).__name__} needs more conditioning than prompt embeddings (e.g. SDXL's "
                           "time ids): use ays.integrations.diffusers.family_of(pipe).denoiser(...), or "
                           "denoiser_from_parts(cond=..., uncond=...)")
        cond["pooled_projections"], uncond["pooled_projections"] = out[2], out[3]
    return cond, uncond


def denoiser_from_pipeline(
    pipe: Any,
    prompts: Sequence[str] | None = None,
    *,
    prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    pooled_prompt_embeds: Tensor | None = None,
    negative_pooled_prompt_embeds: Tensor | None = None,
    negative_prompt: str | Sequence[str] = "",
    guidance_scale: float = 1.0,
    extra_cond: Mapping[str, Any] | None = None,
) -> nn.Module:
    """An ays denoiser for a diffusers pipeline: its network, scheduler and text conditioning.

    Give either ``prompt_embeds`` (``[P, L, D]``; ``negative_prompt_embeds`` too when
    ``guidance_scale != 1``; the pooled ones for SD3) or ``prompts`` (encoded with the
    pipeline's tokenizer and text encoder, negatives from ``negative_prompt``). Neither:
    the empty prompt. ``extra_cond`` is added to both branches (e.g. SDXL's
    ``added_cond_kwargs``). Row ``i`` of a batch is conditioned on prompt ``i mod P``.
    """
    net = _network(pipe)
    if prompts is not None and prompt_embeds is not None:
        raise AysError("give prompts or prompt_embeds, not both")
    if prompt_embeds is not None:
        cond: dict[str, Any] = {"encoder_hidden_states": prompt_embeds}
        uncond: dict[str, Any] | None = None
        if negative_prompt_embeds is not None:
            uncond = {"encoder_hidden_states": negative_prompt_embeds}
        if pooled_prompt_embeds is not None:
            cond["pooled_projections"] = pooled_prompt_embeds
            if uncond is not None:
                if negative_pooled_prompt_embeds is None:
                    raise AysError("negative_pooled_prompt_embeds is needed with pooled_prompt_embeds and guidance")
                uncond["pooled_projections"] = negative_pooled_prompt_embeds
    else:
        cond, uncond = encode_prompts(pipe, list(prompts) if prompts is not None else [""], negative_prompt)
    if extra_cond:
        cond = {**cond, **extra_cond}
        uncond = None if uncond is None else {**uncond, **extra_cond}
    return denoiser_from_parts(net, pipe.scheduler, cond=cond, uncond=uncond, guidance_scale=guidance_scale)


# ----------------------------------------------------------------------------- data


def _images_tensor(images: Any) -> Tensor:
    """Images as a float tensor in [-1, 1], ``[N, C, H, W]``: a tensor (already in [-1, 1]) or PIL images."""
    if isinstance(images, Tensor):
        x = images
        if x.ndim == 3:
            x = x.unsqueeze(0)
        check_batch(x, name="images", min_ndim=4)
        if x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3:
            raise AysError(f"image tensors must lie in [-1, 1] (diffusers' VAE convention), got values in "
                           f"[{x.min().item():.3g}, {x.max().item():.3g}]")
        return x
    import numpy as np

    arrays = []
    for im in images:
        if not hasattr(im, "convert"):
            raise AysError(f"images must be a [-1, 1] tensor or PIL images, got {type(im).__name__}")
        arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
    if not arrays:
        raise AysError("no images given")
    if len({a.shape for a in arrays}) != 1:
        raise AysError("all images must have the same size; resize them first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def latents_from_images(vae: Any, images: Any, *, generator: torch.Generator | None = None, sample: bool = False,
                        batch_size: int = 8) -> Tensor:
    """Encode images into the model's latent space: ``(z - shift_factor)·scaling_factor`` (float32, CPU).

    ``images``: a ``[N, 3, H, W]`` tensor in [-1, 1] or a list of PIL images of one size.
    The posterior mean is used unless ``sample=True`` (then ``generator`` draws from it).
    """
    x = _images_tensor(images)
    cfg = _config(vae)
    scaling = float(cfg.get("scaling_factor", 1.0) or 1.0)
    shift = float(cfg.get("shift_factor", 0.0) or 0.0)
    device = getattr(vae, "device", torch.device("cpu"))
    dtype = getattr(vae, "dtype", torch.float32)
    out = []
    with torch.no_grad():
        for chunk in x.split(max(1, int(batch_size))):
            dist = vae.encode(chunk.to(device=device, dtype=dtype)).latent_dist
            z = dist.sample(generator) if sample else dist.mode()
            out.append(((z.float() - shift) * scaling).cpu())
    return torch.cat(out)


def read_latents(path: Path) -> Tensor:
    """A latent tensor from a ``.pt``/``.safetensors`` file (a tensor, or a dict with ``latents``)."""
    if not path.is_file():
        raise AysError(f"latents {str(path)!r} do not exist" if not path.exists() else
                       f"latents {str(path)!r} must be a .pt/.safetensors file; for a folder of images use --images")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        value: Any = tensors.get("latents", next(iter(tensors.values()), None))
    else:
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a bad file
            raise AysError(f"cannot read latents from {str(path)!r}: {e}") from None
        if isinstance(value, Mapping):
            value = value.get("latents")
    if not isinstance(value, Tensor):
        raise AysError(f"{str(path)!r} holds no latent tensor (save a tensor, or a dict with 'latents')")
    latents = check_batch(value.float(), name="latents", min_ndim=2)
    if not torch.isfinite(latents).all():
        raise AysError(f"latents in {str(path)!r} hold NaN or inf")
    return latents
