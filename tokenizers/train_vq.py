"""Train the VQ image tokenizer (janus_like.JanusLikeVQModel) on a folder of images.

Losses: pixel reconstruction (MSE) + the quantizer's commitment loss; the codebook itself is an
EMA of the encoder outputs assigned to each code (vector_quantize_pytorch), and codes whose EMA
cluster size falls below a share of the mean set by `--dead-code-threshold` (the VQ config's
`threshold_ema_dead_code`, vq.dead_code_ratio) are replaced by encoder outputs of the batch,
which keeps the codebook in use. Optionally a
PatchGAN hinge adversarial loss sharpens details (`--adversarial-weight`), and `--merge-codes`
collapses the near-twin codes that replacement leaves behind (merge_near_codes).

Reports PSNR and codebook usage, writes a grid of originals over reconstructions as a PNG and the
model as a `save_pretrained` directory (load it with `JanusLikeVQModel.from_pretrained`, or
compose it with `JanusLikeForConditionalGeneration.from_parts(vq=...)`).

    python tokenizers/train_vq.py --images DIR --out runs/vq                 # real data, Janus VQ-16 sizes
    python tokenizers/train_vq.py --tiny --steps 50 --out /tmp/vq            # seconds on a CPU (shapes)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from janus_like import JanusLikeError, JanusLikeVQConfig, JanusLikeVQModel
from janus_like.checkpoint.options import check_device
from janus_like.evaluation.shapes import render, single_scenes
from janus_like.fileio import check_output_folder, output_set, plain_modes
from janus_like.images import generation_pixels, load_image, pixels_to_pil

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
TINY = dict(
    base_channels=16,
    channel_multiplier=[1, 1, 2],
    num_res_blocks=1,
    norm_num_groups=8,
    z_channels=16,
    codebook_size=64,
    codebook_dim=8,
)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (strided convs -> one logit per patch); not in diffusers, so written here."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, layers):
            c_in, c_out = channels * 2 ** (i - 1), channels * 2**i
            blocks += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(8, c_out), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(channels * 2 ** (layers - 1), 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synthetic_images(n: int, size: int, seed: int) -> list[Image.Image]:
    """Random one-object scenes of the shapes world: a data set that needs no download."""
    rng = np.random.default_rng(seed)
    scenes = single_scenes()
    return [render(scenes[i], size) for i in rng.integers(0, len(scenes), n)]


def image_tensors(folder: str | None, size: int, n_synthetic: int, seed: int) -> torch.Tensor:
    """All training images as VQ inputs (N, 3, size, size) in [-1, 1]."""
    if folder is None:
        images = synthetic_images(n_synthetic, size, seed)
    else:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            sys.exit(f"train_vq: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
        images = [load_image(p) for p in tqdm(paths, desc="reading images")]
    return torch.stack([generation_pixels(im, size) for im in images])


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB on [0, 1] pixels."""
    mse = F.mse_loss((reconstruction.clamp(-1, 1) + 1) / 2, (target + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def evaluate(model: JanusLikeVQModel, images: torch.Tensor, batch_size: int) -> dict:
    """PSNR of encode -> decode, and the share of the codebook the images use."""
    model.eval()
    recons, used = [], torch.zeros(model.config.codebook_size, dtype=torch.bool)
    for chunk in images.split(batch_size):
        ids = model.encode(chunk)
        used[ids.flatten().cpu()] = True
        recons.append(model.decode(ids).float())
    model.train()
    recon = torch.cat(recons)
    return {
        "psnr": psnr(recon, images.float()),
        "codebook_usage": used.float().mean().item(),
        "reconstruction": recon,
        "codes_per_image": ids[0].numel(),
    }


@torch.no_grad()
def merge_near_codes(model: JanusLikeVQModel, images: torch.Tensor, tolerance: float, batch_size: int) -> int:
    """Keep one code per direction the images use (codes within `tolerance` of cosine distance of
    a more used one are dropped) and park every other code where no image patch reaches it;
    returns the number kept. Why: dead-code replacement refills unused codes with copies of
    frequent encoder outputs, so many codes nearly coincide (the embedded model's blank page had
    codes 0 and 417 at cosine 0.9997), and which one a patch gets is decided by float rounding.
    Merging makes a patch's code stable across precisions and devices and leaves the generator
    one id per look. The EMA buffers are left as they were: merging is the last step of training."""
    model.eval()
    book = F.normalize(model.codebook.float(), dim=-1)
    ids = torch.cat([model.encode(chunk) for chunk in images.split(batch_size)]).flatten()
    counts = torch.bincount(ids.cpu(), minlength=len(book))
    kept: list[int] = []
    for code in counts.argsort(descending=True)[: int((counts > 0).sum())].tolist():
        if not kept or float((book[kept] @ book[code]).max()) < 1 - tolerance:
            kept.append(code)
    latents = torch.cat([model._latents(part).float().flatten(2).transpose(1, 2) for part in images.split(batch_size)])
    latents = F.normalize(latents.reshape(-1, book.shape[1]), dim=-1)
    # the parking direction: the random unit vector least similar to every patch's latent
    candidates = F.normalize(torch.randn(4096, book.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1)
    reach = (latents @ candidates.to(latents.device).t()).max(dim=0).values
    park = candidates[int(reach.argmin())].to(book.device)
    if float(reach.min()) >= float((latents @ book[kept].t()).max(dim=-1).values.min()):
        raise JanusLikeError("train_vq: --merge-codes found no direction that every image patch is farther from")
    merged = park.expand_as(book).clone()
    merged[kept] = book[kept]
    model.codebook.copy_(merged.to(model.codebook.dtype))
    model.train()
    return len(kept)


def save_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, n: int = 8) -> None:
    """Originals (top row) over reconstructions (bottom row), upscaled for viewing."""
    tops, bottoms = pixels_to_pil(originals[:n]), pixels_to_pil(reconstructions[:n])
    side = max(128, tops[0].width)
    grid = Image.new("RGB", (side * len(tops), side * 2), "white")
    for i, (a, b) in enumerate(zip(tops, bottoms)):
        grid.paste(a.resize((side, side), Image.Resampling.NEAREST), (i * side, 0))
        grid.paste(b.resize((side, side), Image.Resampling.NEAREST), (i * side, side))
    grid.save(path)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    sizes = TINY if args.tiny else {}
    config = JanusLikeVQConfig(
        **sizes, threshold_ema_dead_code=args.dead_code_threshold, codebook_decay=args.codebook_decay
    )
    if args.codebook_size is not None:
        config.codebook_size = args.codebook_size
    if args.codebook_dim is not None:
        config.codebook_dim = args.codebook_dim
    if args.channel_multiplier is not None:  # one level per entry; each after the first halves the side
        config.channel_multiplier = args.channel_multiplier
    config.patch_encoder = args.patch_encoder
    image_size = args.image_size or (32 if args.tiny else 384)
    images = image_tensors(args.images, image_size, args.synthetic, args.seed)
    if args.holdout:  # the last images never train: PSNR and usage measure generalisation
        if args.holdout >= len(images):
            sys.exit(f"train_vq: --holdout {args.holdout} leaves no training images (there are {len(images)})")
        images, eval_images = images[: -args.holdout], images[-args.holdout :]
    else:
        eval_images = images[: args.eval_images]
    model = JanusLikeVQModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.5, 0.9))
    disc = disc_opt = None
    if args.adversarial_weight > 0:
        disc = PatchDiscriminator(channels=16 if args.tiny else 64).to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))

    before = evaluate(model, eval_images.to(device), args.batch_size)
    generator = torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.steps), desc="training VQ", unit="step")
    for step in bar:
        batch = images[torch.randint(len(images), (args.batch_size,), generator=generator)].to(device)
        out = model(batch)
        loss = out["loss"]
        use_adv = disc is not None and step >= args.adversarial_start
        if use_adv:  # generator side of the hinge loss
            loss = loss - args.adversarial_weight * disc(out["reconstruction"]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if use_adv:
            real, fake = disc(batch), disc(out["reconstruction"].detach())
            disc_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            disc_opt.zero_grad(set_to_none=True)
            disc_loss.backward()
            disc_opt.step()
        bar.set_postfix(recon=f"{out['recon_loss'].item():.4f}", usage=f"{out['codebook_usage'].item():.2f}")

    kept = merge_near_codes(model, images.to(device), args.merge_codes, args.batch_size) if args.merge_codes else None
    after = evaluate(model, eval_images.to(device), args.batch_size)
    out_dir = Path(args.out)
    final = out_dir / "model"
    with output_set(out_dir) as tmp:  # replaces what a former run wrote there, nothing else
        save_grid(eval_images, after["reconstruction"].cpu(), tmp / "reconstructions.png")
        model.save_pretrained(tmp / "model")
        plain_modes(tmp / "model")  # a model to share: safetensors writes owner-only files
    report = {
        "psnr_before": before["psnr"],
        "psnr": after["psnr"],
        "codebook_usage_before": before["codebook_usage"],
        "codebook_usage": after["codebook_usage"],
        "codes_kept": kept,
    }
    codes = len(eval_images) * after["codes_per_image"]  # usage cannot exceed what the images hold
    cap = (
        f", at most {codes / config.codebook_size:.1%} with {len(eval_images)} images"
        if codes < config.codebook_size
        else ""
    )
    print(
        f"PSNR {before['psnr']:.2f} -> {after['psnr']:.2f} dB; codebook usage "
        f"{before['codebook_usage']:.1%} -> {after['codebook_usage']:.1%} of {config.codebook_size} codes{cap}"
        f"{f', {kept} kept after merging' if kept else ''} "
        f"(on {len(eval_images)} {'held-out' if args.holdout else 'training'} images); "
        f"wrote {final} and {out_dir / 'reconstructions.png'}"
    )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=None, help="folder of images (default: synthetic shapes)")
    p.add_argument("--out", default="runs/vq")
    p.add_argument("--tiny", action="store_true", help="tiny model and 32px images: seconds on a CPU")
    p.add_argument(
        "--image-size",
        type=whole(16),
        default=None,
        help="default 384 (32 with --tiny); a multiple of the VQ's downsampling",
    )
    p.add_argument("--codebook-size", type=whole(2), default=None)
    p.add_argument("--codebook-dim", type=whole(2), default=None, help="default 8")
    p.add_argument(
        "--channel-multiplier",
        type=lambda text: [whole(1)(v) for v in text.split(",")],
        default=None,
        help="channels per level as multiples of the base, e.g. 1,1,2,2 (4 levels: 8x downsampling); "
        "default 1,1,2 with --tiny",
    )
    p.add_argument(
        "--patch-encoder",
        action="store_true",
        help="encode each patch alone (vq.PatchEncoder), so that a code means the same pixels anywhere",
    )
    p.add_argument(
        "--dead-code-threshold",
        type=number(0),
        default=2.0,
        help="replace codes whose EMA cluster size falls below this share of the mean"
        " (>= 1: this / codebook size, vq.dead_code_ratio; 0: never)",
    )
    p.add_argument("--codebook-decay", type=number(0, 1), default=0.8, help="EMA decay of the codebook")
    p.add_argument(
        "--merge-codes",
        type=number(0, 1),
        default=0.0,
        help="after training, merge codes the images use within this cosine distance and park unused ones (0: off)",
    )
    p.add_argument("--adversarial-weight", type=number(0), default=0.0, help="PatchGAN hinge loss weight (0: off)")
    p.add_argument("--adversarial-start", type=whole(0), default=0, help="step at which the adversarial loss starts")
    p.add_argument("--steps", type=whole(1), default=1000)
    p.add_argument("--batch-size", type=whole(1), default=16)
    p.add_argument("--lr", type=number(0), default=1e-3)
    p.add_argument("--synthetic", type=whole(1), default=256, help="synthetic images when --images is not given")
    p.add_argument(
        "--eval-images", type=whole(1), default=16, help="evaluate on the first N training images (without --holdout)"
    )
    p.add_argument(
        "--holdout",
        type=whole(0),
        default=0,
        help="keep the last N images out of training and evaluate on them (0: evaluate on training images)",
    )
    p.add_argument("--seed", type=whole(0), default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        check_output_folder(args.out)
        check_device(args.device)
    except JanusLikeError as e:
        p.exit(2, f"train_vq: {e}\n")
    sizes = dict(TINY if args.tiny else {})
    if args.channel_multiplier is not None:
        sizes["channel_multiplier"] = args.channel_multiplier
    factor = JanusLikeVQConfig(**sizes).downsample_factor
    if args.image_size is not None and args.image_size % factor:
        p.exit(
            2,
            f"train_vq: --image-size {args.image_size} is not a multiple of {factor}, the VQ's downsampling "
            f"{'(--tiny) ' if args.tiny else ''}(e.g. {args.image_size // factor * factor or factor})\n",
        )
    if args.holdout and args.images is None:
        p.exit(
            2,
            "train_vq: --holdout needs --images: the synthetic shapes world has 45 scenes, which repeat, "
            "so held-out synthetic images would be copies of training ones\n",
        )
    return args


def whole(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def number(low: float, high: float = math.inf):
    """An argparse type: a finite number in [low, high]."""

    def parse(text: str) -> float:
        value = float(text)
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError
        return value

    parse.__name__ = f"number in [{low}, {high}]" if math.isfinite(high) else f"finite number >= {low}"
    return parse


if __name__ == "__main__":
    try:
        train(parse_args())
    except JanusLikeError as e:  # e.g. an unreadable image under --images
        sys.exit(f"train_vq: {e}")
