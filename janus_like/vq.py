"""The VQ image tokenizer: pixels <-> a grid of discrete codebook ids.

Built from library pieces (docs/ARCHITECTURE.md §1): `diffusers`' VAE `Encoder`/`Decoder` for the
convolutional trunk and `vector_quantize_pytorch.VectorQuantize` with cosine-similarity codes
(the l2-normalised codebook of LlamaGen / Janus VQ-16). At the default sizes every tensor has the
shape needed to hold Janus's `gen_vision_model` weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn
from transformers import PreTrainedModel
from vector_quantize_pytorch import VectorQuantize

from .configuration import JanusLikeVQConfig


def dead_code_ratio(config: JanusLikeVQConfig) -> float:
    """The config's `threshold_ema_dead_code` as vector-quantize-pytorch >= 1.34 takes it: a share
    of the mean cluster size. A count of 1 or more becomes count / codebook_size, the conversion
    that version applies to its deprecated argument (passing that argument logs a warning on every
    load); a value below 1 is a share already; 0 never replaces a code."""
    threshold = config.threshold_ema_dead_code
    return threshold / config.codebook_size if threshold >= 1 else threshold


class PatchEncoder(nn.Module):
    """Pixels -> latents, each f×f patch encoded alone (a patchify convolution, then per-patch 1×1
    layers): a code means the same pixels wherever it stands, so a decoder that drew an object in
    one place can draw it in another. diffusers' Encoder mixes the whole image into every latent
    (3×3 convolutions and attention; in the shapes world 162 of 240 object patches got other codes
    at other places, and the blank page varied too), and no setting of it makes it local."""

    def __init__(self, config: JanusLikeVQConfig):
        super().__init__()
        f, width = config.downsample_factor, 4 * config.base_channels * max(config.channel_multiplier)
        self.patchify = nn.Conv2d(config.in_channels, width, f, stride=f)
        self.mlp = nn.Sequential(
            nn.SiLU(), nn.Conv2d(width, width, 1), nn.SiLU(), nn.Conv2d(width, config.z_channels, 1)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.patchify(pixel_values))


class JanusLikeVQModel(PreTrainedModel):
    """Encoder -> 1x1 quant conv -> cosine-sim VQ -> 1x1 post-quant conv -> Decoder."""

    config_class = JanusLikeVQConfig
    base_model_prefix = "vq"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True

    def __init__(self, config: JanusLikeVQConfig):
        super().__init__(config)
        levels = len(config.channel_multiplier)
        channels = tuple(config.base_channels * m for m in config.channel_multiplier)
        # LlamaGen puts self-attention only at the lowest resolution: the last down level, first up level.
        self.encoder = (
            PatchEncoder(config)
            if config.patch_encoder
            else Encoder(
                in_channels=config.in_channels,
                out_channels=config.z_channels,
                down_block_types=("DownEncoderBlock2D",) * (levels - 1) + ("AttnDownEncoderBlock2D",),
                block_out_channels=channels,
                layers_per_block=config.num_res_blocks,
                norm_num_groups=config.norm_num_groups,
                double_z=False,
            )
        )
        self.decoder = Decoder(
            in_channels=config.z_channels,
            out_channels=config.out_channels,
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (levels - 1),
            block_out_channels=channels,
            layers_per_block=config.num_res_blocks,
            norm_num_groups=config.norm_num_groups,
        )
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.z_channels, 1)
        self.quantize = VectorQuantize(
            dim=config.codebook_dim,
            codebook_size=config.codebook_size,
            use_cosine_sim=True,
            decay=config.codebook_decay,
            commitment_weight=config.commitment_weight,
            dead_code_threshold_ratio=dead_code_ratio(config),
            accept_image_fmap=True,
        )
        self.post_init()

    @property
    def codebook(self) -> torch.Tensor:
        """The (codebook_size, codebook_dim) table of unit-norm codes."""
        return self.quantize.codebook

    def _latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(pixel_values.to(self.quant_conv.weight.dtype)))

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (B, 3, H, W) -> code ids (B, H/f * W/f), row-major.

        Autocast is off: codes a few 1e-3 apart in cosine are told apart by rounding, and a
        training target must not depend on the trainer's mixed precision (bf16 autocast coded
        the embedded model's blank patch 0, float32 coded it 417)."""
        with torch.autocast(pixel_values.device.type, enabled=False):
            latents = self._latents(pixel_values).float()
            # Nearest unit-norm code by cosine similarity; the same argmax VectorQuantize takes,
            # done here so that encoding never updates the EMA codebook.
            normed = F.normalize(latents, dim=1).flatten(2).transpose(1, 2)  # (B, hw, D)
            similarity = normed @ self.codebook.float().t()
        return similarity.argmax(dim=-1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h*w) of a square grid, or (B, h, w) -> pixels (B, 3, H, W), roughly in [-1, 1]."""
        if ids.dim() == 2:
            side = int(round(ids.shape[1] ** 0.5))
            if side * side != ids.shape[1]:
                raise ValueError(f"decode needs a square grid of codes, got {ids.shape[1]} per image")
            ids = ids.view(ids.shape[0], side, side)
        codes = self.quantize.get_codes_from_indices(ids)  # (B, D, h, w)
        return self.decoder(self.post_quant_conv(codes.to(self.post_quant_conv.weight.dtype)))

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward: reconstruction plus codebook losses and codebook usage."""
        latents = self._latents(pixel_values)
        quantized, ids, commit_loss = self.quantize(latents.float())
        reconstruction = self.decoder(self.post_quant_conv(quantized.to(latents.dtype)))
        recon_loss = F.mse_loss(reconstruction.float(), pixel_values.float())
        counts = torch.bincount(ids.flatten(), minlength=self.config.codebook_size).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        return {
            "reconstruction": reconstruction,
            "ids": ids.flatten(1),
            "recon_loss": recon_loss,
            "codebook_loss": commit_loss.sum(),
            "loss": recon_loss + commit_loss.sum(),
            "codebook_usage": (counts > 0).float().mean(),
            "perplexity": perplexity,
        }
