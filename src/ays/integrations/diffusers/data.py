"""Data as users have it: captioned image folders, prompt lists, latent files with captions.

Every loader returns :class:`ays.data.Conditioned`: latents ``[N, C, h, w]`` in the model's
latent space and, row by row, the network's conditioning for *that row's own caption*
(the KLUB is an expectation over the joint law of image and caption).

- :func:`from_images`: a folder of images with captions in the ecosystem's layouts — a
  ``metadata.jsonl`` with ``file_name`` and ``text`` per line (Hugging Face's imagefolder),
  or a ``NAME.txt`` beside each ``NAME.png`` (the fine-tuning trainers'); each image is
  resized to cover the resolution and centre-cropped, then encoded by the pipeline's VAE
  (``(z − shift_factor)·scaling_factor``, :func:`~ays.integrations.diffusers.latents_from_images`).
- :func:`model_samples`: no images, only prompts — the model's own samples, from a
  many-step run of the pipeline itself, cached on disk (``$AYS_CACHE``, else
  ``~/.cache/ays/samples``) under a key of model folder, prompts, resolution, steps, seed,
  guidance and negative prompt, so a second run reuses them.
- :func:`from_latents`: a latent tensor file with a caption file of the same length.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...data import Conditioned
from ...validate import AysError
from .family import Family

__all__ = ["IMAGE_SUFFIXES", "cached_latents", "captioned_files", "conditioned", "from_images", "from_latents",
           "load_image", "model_samples", "read_lines", "sample_key"]

Tensor = torch.Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_lines(path: str | os.PathLike[str], what: str) -> list[str]:
    """The non-empty lines of a text file (prompts, captions), stripped; an :class:`AysError` if none."""
    p = Path(path).expanduser()
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise AysError(f"cannot read the {what} file {str(path)!r}: {e}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise AysError(f"the {what} file {str(path)!r} holds no lines")
    return lines


def captioned_files(folder: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """``(image, caption)`` pairs of a folder: ``metadata.jsonl`` (``file_name``, ``text``) or ``NAME.txt`` files."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise AysError(f"--images {str(folder)!r} is not a folder")
    meta = root / "metadata.jsonl"
    if meta.is_file():
        pairs = []
        for i, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
            except (ValueError, KeyError, TypeError):
                raise AysError(f"{str(meta)!r} line {i} is not a JSON object with file_name and text") from None
            if not (root / name).is_file():
                raise AysError(f"{str(meta)!r} line {i} names {name!r}, which is not in the folder")
            pairs.append((root / name, str(text)))
        if not pairs:
            raise AysError(f"{str(meta)!r} lists no images")
        return pairs
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise AysError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(root)!r}")
    missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise AysError(f"{str(root)!r} has images without captions ({missing[0]}"
                       f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}): add a metadata.jsonl with "
                       "file_name and text, or a NAME.txt caption beside each image")
    return [(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]


def load_image(path: Path, resolution: tuple[int, int]) -> Tensor:
    """An RGB image ``[3, H, W]`` in [-1, 1]: resized to cover ``resolution``, centre-cropped to it."""
    import numpy as np
    from PIL import Image

    h, w = resolution
    try:
        im = Image.open(path).convert("RGB")
    except OSError as e:
        raise AysError(f"cannot read the image {str(path)!r}: {e}") from None
    scale = max(h / im.height, w / im.width)
    size = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
    im = im.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    im = im.crop((left, top, left + w, top + h))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def conditioned(family: Family, latents: Tensor, captions: Sequence[str], resolution: tuple[int, int],
                negative_prompt: str | None = None, batch_size: int = 16) -> Conditioned:
    """Latents with each row's conditioning from its own caption (each distinct caption encoded once)."""
    if len(captions) != latents.shape[0]:
        raise AysError(f"{len(captions)} captions for {latents.shape[0]} latents: give one caption per row")
    unique = sorted(set(captions))
    parts: list[dict[str, Tensor]] = []
    for i in range(0, len(unique), batch_size):
        parts.append(family.encode(unique[i:i + batch_size], negative_prompt, resolution)[0])
    # kept in the text encoders' dtype: a bfloat16 Flux's T5 rows are 4 MB each, not 8
    table = {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}
    rows = torch.tensor([unique.index(c) for c in captions])
    return Conditioned(latents.float().cpu(), {k: v[rows] for k, v in table.items()})


def from_images(family: Family, folder: str | os.PathLike[str], resolution: tuple[int, int],
                negative_prompt: str | None = None) -> Conditioned:
    """A captioned image folder as VAE latents with per-row caption conditioning."""
    from .adapter import latents_from_images

    pairs = captioned_files(folder)
    images = torch.stack([load_image(p, resolution) for p, _ in pairs])
    latents = latents_from_images(family.pipe.vae, images)
    return conditioned(family, latents, [c for _, c in pairs], resolution, negative_prompt)


def from_latents(family: Family, latents_file: str | os.PathLike[str], captions: Sequence[str],
                 resolution: tuple[int, int] | None, negative_prompt: str | None = None) -> Conditioned:
    """A latent tensor file and one caption per row (a single caption serves every row)."""
    from .adapter import read_latents

    latents = read_latents(Path(latents_file).expanduser())
    if latents.ndim != 4:
        raise AysError(f"latents must be [N, C, h, w], got shape {tuple(latents.shape)}")
    res = resolution or (latents.shape[2] * family.vae_scale, latents.shape[3] * family.vae_scale)
    want = family.latent_shape(res)
    if tuple(latents.shape[1:]) != want:
        raise AysError(f"latents of shape {tuple(latents.shape[1:])} do not fit a {res[0]}x{res[1]} image of this "
                       f"model, which has latents {want}")
    rows = list(captions) * latents.shape[0] if len(captions) == 1 else list(captions)
    return conditioned(family, latents, rows, res, negative_prompt)


def _cache_dir() -> Path:
    return Path(os.environ.get("AYS_CACHE") or Path.home() / ".cache" / "ays") / "samples"


def sample_key(model: str | os.PathLike[str], **settings: Any) -> str:
    """The cache key of a sample set: the model folder (path and model_index.json) and every setting."""
    folder = Path(model).expanduser().resolve()
    index = folder / "model_index.json"
    stamp = index.stat().st_mtime_ns if index.is_file() else 0
    doc = json.dumps({"model": str(folder), "stamp": stamp, **settings}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def model_samples(family: Family, model: str | os.PathLike[str], prompts: Sequence[str],
                  resolution: tuple[int, int], *, steps: int = 50, seed: int = 0, guidance_scale: float | None = None,
                  negative_prompt: str | None = None, batch_size: int = 4,
                  progress: Callable[[int, int], None] | None = None) -> tuple[Conditioned, bool]:
    """The model's own ``steps``-step samples of ``prompts`` (one each) with their conditioning; ``(data, cached)``.

    ``progress(done, total)``: after every step of every batch (total: batches × steps), when the
    pipeline reports its steps (``callback_on_step_end``), else after every batch.
    """
    scale = family.default_guidance() if guidance_scale is None else float(guidance_scale)
    key = sample_key(model, prompts=list(prompts), resolution=list(resolution), steps=steps, seed=seed,
                     guidance=scale, negative=negative_prompt)

    def make() -> Tensor:
        h, w = resolution
        g = torch.Generator(family.device).manual_seed(int(seed))
        kwargs: dict[str, Any] = {"num_inference_steps": int(steps), "guidance_scale": scale, "height": h,
                                  "width": w, "generator": g, "output_type": "latent"}
        if negative_prompt and family.uses_cfg(scale):
            kwargs["negative_prompt"] = negative_prompt
        out = []
        batches = range(0, len(prompts), batch_size)
        total = len(batches) * int(steps)
        per_step = progress is not None and "callback_on_step_end" in inspect.signature(family.pipe.__call__).parameters
        with torch.no_grad():
            for b, i in enumerate(batches):
                if per_step:
                    def on_step(pipe: Any, step: int, t: Any, kw: dict[str, Any], b: int = b) -> dict[str, Any]:
                        progress(b * int(steps) + step + 1, total)
                        return kw

                    kwargs["callback_on_step_end"] = on_step
                images = family.pipe(prompt=list(prompts[i:i + batch_size]), **kwargs).images
                out.append(family.latents_from_output(images, resolution).float().cpu())
                if progress is not None:
                    progress((b + 1) * int(steps), total)
        return torch.cat(out)

    latents, cached = cached_latents(key, make)
    return conditioned(family, latents, list(prompts), resolution, negative_prompt), cached


def cached_latents(key: str, make: Callable[[], Tensor]) -> tuple[Tensor, bool]:
    """``(latents, cached)``: the sample set stored under ``key`` in the cache, else ``make()``, stored atomically.

    Under ``torchrun`` rank 0 alone reads or makes them (the pipeline's own loop is not shared
    out) while the other ranks wait, and every rank gets them (:func:`ays.distributed.from_rank_zero`).
    """
    from ...distributed import from_rank_zero

    return from_rank_zero(_read_or_make, key, make)


def _read_or_make(key: str, make: Callable[[], Tensor]) -> tuple[Tensor, bool]:
    from ...io import atomic_write_bytes

    path = _cache_dir() / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)["latents"], True
    latents = make()
    buf = io.BytesIO()
    torch.save({"latents": latents}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return latents, False
