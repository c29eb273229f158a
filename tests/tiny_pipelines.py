"""Tiny random diffusers pipelines of every family ays supports, built locally from configs.

Nothing is downloaded: the networks are random, the tokenizers are built from a letter
vocabulary written here (a CLIP BPE tokenizer with no merges, a T5 unigram tokenizer, a Gemma
byte-fallback BPE tokenizer with no merges),
and each pipeline is saved with ``save_pretrained`` as users have theirs. Shapes are as
small as the layers allow (4 latent channels, 16 px images, 8x8 latents) so that a
whole command-line run takes a second or two on one core.

``build(family, folder)`` writes one folder; the ``tiny_pipeline`` fixture of
``tests/test_families.py`` builds each once per session.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("sd15", "sd2v", "sdxl", "sd3", "sd3_no_t5", "flux", "flux_schnell")
#: Pipelines of no family of their own, driven through their own ``__call__`` (the route).
ROUTED = ("svd", "wan", "ltx", "pixart_sigma", "chroma", "lumina2")
#: Frames of the tiny video pipelines (Wan's VAE: 1 + 4k frames -> 1 + k latent frames).
FRAMES = {"svd": 3, "wan": 5, "ltx": 9}
#: Their image sides in pixels (Wan's VAE downsamples 8x: 32 px are 4x4 latents, 2x2 tokens a frame;
#: Lumina 2 assumes an 8x VAE, its tiny one has 4 blocks).
ROUTED_RESOLUTION = {"svd": 16, "wan": 32, "ltx": 32, "pixart_sigma": 16, "chroma": 16, "lumina2": 32}
#: Image side length in pixels each tiny pipeline samples at by default (VAE factor 2: 8x8 latents).
RESOLUTION = 16

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}


def clip_tokenizer(folder: Path, max_length: int = 8) -> Any:
    """A CLIP tokenizer over single letters (no BPE merges): every word is spelled out."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(LETTERS)})
    vocab.update({c + "</w>": i + 2 + len(LETTERS) for i, c in enumerate(LETTERS)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                      model_max_length=max_length)


def t5_tokenizer(max_length: int = 8) -> Any:
    """A T5 (unigram) tokenizer over single letters."""
    import transformers

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in LETTERS] + [("\u2581" + c, -1.5) for c in LETTERS]
    return transformers.T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def gemma_tokenizer() -> Any:
    """A Gemma tokenizer (BPE with byte fallback, spaces as the metaspace U+2581) over single letters, no merges."""
    import transformers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    vocab.update({c: i + 6 for i, c in enumerate(LETTERS + LETTERS.upper())})
    return transformers.GemmaTokenizer(vocab=vocab, merges=[])


def _clip_config(**kw: Any) -> Any:
    import transformers

    cfg = dict(vocab_size=2 + 2 * len(LETTERS), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
               num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
               projection_dim=16)
    cfg.update(kw)
    return transformers.CLIPTextConfig(**cfg)


def _t5_encoder(d_model: int = 16, umt5: bool = False) -> Any:
    import transformers

    model, config = ((transformers.UMT5EncoderModel, transformers.UMT5Config) if umt5 else
                     (transformers.T5EncoderModel, transformers.T5Config))
    return model(config(
        vocab_size=4 + 2 * len(LETTERS), d_model=d_model, d_ff=24, d_kv=8, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()


def _vae(shift_factor: float | None = None, scaling_factor: float = 0.5, blocks: int = 2) -> Any:
    """A VAE that downsamples by ``2 ** (blocks - 1)``."""
    import diffusers

    return diffusers.AutoencoderKL(
        block_out_channels=(8,) * blocks, in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        sample_size=RESOLUTION, scaling_factor=scaling_factor, shift_factor=shift_factor,
    ).eval()


def _unet(cross_attention_dim: int, **kw: Any) -> Any:
    import diffusers

    return diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=RESOLUTION // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=8, attention_head_dim=4, **kw,
    ).eval()


def _sd(folder: Path, prediction: str) -> Any:
    import diffusers
    import transformers

    encoder = transformers.CLIPTextModel(_clip_config()).eval()
    scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS, prediction_type=prediction,
                                                 timestep_spacing="trailing")
    return diffusers.StableDiffusionPipeline(
        vae=_vae(), text_encoder=encoder, tokenizer=clip_tokenizer(folder / "_tok"), unet=_unet(16),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _sdxl(folder: Path) -> Any:
    import diffusers
    import transformers

    enc1 = transformers.CLIPTextModel(_clip_config()).eval()
    enc2 = transformers.CLIPTextModelWithProjection(_clip_config(hidden_size=16, projection_dim=8)).eval()
    # cross attention sees both encoders' hidden states side by side; the added embedding sees
    # the 6 size/crop ids (8 channels each) and the second encoder's pooled projection.
    unet = _unet(32, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 8)
    scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing")
    tok = clip_tokenizer(folder / "_tok")
    return diffusers.StableDiffusionXLPipeline(vae=_vae(), text_encoder=enc1, text_encoder_2=enc2, tokenizer=tok,
                                               tokenizer_2=tok, unet=unet, scheduler=scheduler)


def _sd3(folder: Path, with_t5: bool) -> Any:
    import diffusers
    import transformers

    enc1 = transformers.CLIPTextModelWithProjection(_clip_config(projection_dim=8)).eval()
    enc2 = transformers.CLIPTextModelWithProjection(_clip_config(projection_dim=8)).eval()
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=RESOLUTION // 2, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16,
        out_channels=4, pos_embed_max_size=RESOLUTION // 2).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    tok = clip_tokenizer(folder / "_tok")
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=_vae(shift_factor=0.1), text_encoder=enc1, tokenizer=tok,
        text_encoder_2=enc2, tokenizer_2=tok, text_encoder_3=_t5_encoder(32) if with_t5 else None,
        tokenizer_3=t5_tokenizer() if with_t5 else None)


def _flux(folder: Path, guidance: bool) -> Any:
    import diffusers
    import transformers

    clip = transformers.CLIPTextModel(_clip_config()).eval()
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4)).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=4,
        max_image_seq_len=64)
    return diffusers.FluxPipeline(scheduler=scheduler, vae=_vae(shift_factor=0.1), text_encoder=clip,
                                  tokenizer=clip_tokenizer(folder / "_tok"), text_encoder_2=_t5_encoder(16),
                                  tokenizer_2=t5_tokenizer(), transformer=transformer)


def _svd() -> Any:
    """Stable Video Diffusion's layout (image encoder, spatio-temporal UNet, temporal VAE) and scheduler config."""
    import diffusers
    import transformers

    unet = diffusers.UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 32), layers_per_block=1, sample_size=RESOLUTION // 2, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=16,
        num_attention_heads=(2, 4), projection_class_embeddings_input_dim=3 * 8, addition_time_embed_dim=8).eval()
    # the released scheduler config: EDM-like continuous sigmas 0.002..700, v prediction, Karras spacing
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    vae = diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2).eval()
    encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2, image_size=224,
        intermediate_size=24, patch_size=56)).eval()  # SVD resizes the conditioning image to 224 px
    extractor = transformers.CLIPImageProcessor(crop_size=224, size=224)
    return diffusers.StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                                  feature_extractor=extractor)


def _wan() -> Any:
    """Wan 2.1 text-to-video's layout (umT5 text encoder, 3-D transformer, causal video VAE) and scheduler."""
    import diffusers

    vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                                     temperal_downsample=[False, True, True]).eval()
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=24, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32).eval()
    # as released: UniPC on flow sigmas with flow_shift 3 (480p)
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=3.0)
    return diffusers.WanPipeline(tokenizer=t5_tokenizer(), text_encoder=_t5_encoder(16, umt5=True),
                                 transformer=transformer, vae=vae, scheduler=scheduler)


def _ltx() -> Any:
    """LTX-Video's layout (T5, a 3-D transformer on packed tokens, its video VAE) and its shifting scheduler."""
    import diffusers

    vae = diffusers.AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False).eval()
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=1, caption_channels=16).eval()
    # as released (0.9.1): dynamic shift by token count, stretched to end at shift_terminal
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
        shift_terminal=0.1)
    return diffusers.LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=_t5_encoder(16), tokenizer=t5_tokenizer(),
                                 transformer=transformer)


def _pixart_sigma() -> Any:
    """PixArt-Σ's layout (T5, a DiT with learned variance) and its DPM-Solver scheduler."""
    import diffusers

    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=RESOLUTION // 2, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=16, in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6).eval()
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    return diffusers.PixArtSigmaPipeline(tokenizer=t5_tokenizer(), text_encoder=_t5_encoder(16), vae=_vae(),
                                         transformer=transformer, scheduler=scheduler)


def _chroma() -> Any:
    """Chroma's layout (T5 only, a Flux-like transformer whose modulation comes from an approximator, no CLIP)."""
    import diffusers

    transformer = diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(2, 2, 4), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=4,
        max_image_seq_len=64)
    return diffusers.ChromaPipeline(scheduler=scheduler, vae=_vae(shift_factor=0.1), text_encoder=_t5_encoder(16),
                                    tokenizer=t5_tokenizer(), transformer=transformer)


def _lumina2() -> Any:
    """Lumina Image 2.0's layout (a Gemma 2 decoder as text encoder, a DiT on 2x2 patches) and its shifted scheduler."""
    import diffusers
    import transformers

    tokenizer = gemma_tokenizer()
    encoder = transformers.Gemma2Model(transformers.Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()
    transformer = diffusers.Lumina2Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, hidden_size=16, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=8, axes_dim_rope=(2, 2, 4), axes_lens=(300, 16, 16),
        cap_feat_dim=16).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=6.0)  # as released: a fixed shift of 6
    # the pipeline assumes an 8x VAE (its vae_scale_factor is fixed): 4 blocks
    return diffusers.Lumina2Pipeline(transformer=transformer, scheduler=scheduler, vae=_vae(shift_factor=0.1, blocks=4),
                                     text_encoder=encoder, tokenizer=tokenizer)


def make(family: str, folder: Path, seed: int = 0) -> Any:
    """The tiny pipeline of ``family`` (one of :data:`FAMILIES` or :data:`ROUTED`), random weights from ``seed``."""
    torch.manual_seed(seed)
    builders = {"sd15": lambda: _sd(folder, "epsilon"), "sd2v": lambda: _sd(folder, "v_prediction"),
                "sdxl": lambda: _sdxl(folder), "sd3": lambda: _sd3(folder, True),
                "sd3_no_t5": lambda: _sd3(folder, False), "flux": lambda: _flux(folder, True),
                "flux_schnell": lambda: _flux(folder, False), "svd": _svd, "wan": _wan, "ltx": _ltx,
                "pixart_sigma": _pixart_sigma, "chroma": _chroma, "lumina2": _lumina2}
    pipe = builders[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build(family: str, folder: Path, seed: int = 0) -> Path:
    """Save the tiny pipeline of ``family`` to ``folder / family`` and return that path."""
    out = folder / family
    make(family, folder, seed).save_pretrained(out)
    if family == "sd3_no_t5":
        # As SD3 folders without T5 are published: the component is listed, as null.
        index = json.loads((out / "model_index.json").read_text())
        index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
        (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The relative difference ``|a − b| / |b|`` of two outputs."""
    return ((a - b).norm() / b.norm()).item()


def run_cli(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``ays ARGV`` run in this process (``capsys``: pytest's fixture)."""
    import pytest

    from ays.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err
