"""A small, faithful re-implementation of DeepSeek's Janus modules, the ground truth for parity tests.

Written from the facts in notes/deepseek_janus.md (github deepseek-ai/Janus @ 1daa72f:
siglip_vit.py, clip_encoder.py, projector.py, vq_model.py, modeling_vlm.py, processing_vlm.py,
conversation.py, generation_inference.py), with their module and parameter names, so that
`state_dict()` has exactly the keys of their checkpoints. Deliberately independent of janus_like:
timm-style SigLIP with a fused qkv, LlamaGen's VQ with its l2-normalised codebook, mlp_gelu
projectors, the vision head, the SFT prompt template and the CFG generation loop.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

# siglip_vit.SigLIP_MODEL_CONFIG and LlamaGen's VQ ModelArgs, by name; tests add tiny entries
SIGLIP_TABLE = {
    "siglip_large_patch16_384": dict(image_size=384, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4)
}
VQ_TABLE = {
    "VQ-16": dict(
        ch=128, ch_mult=[1, 1, 2, 2, 4], z_channels=256, num_res_blocks=2, codebook_size=16384, codebook_embed_dim=8
    )
}
SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

# ----------------------------------------------------------------------------- SigLIP (timm ViT)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class AttentionPoolLatent(nn.Module):
    """The "map" pooling head: in the checkpoint, never run (ignore_head=True)."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, width)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.attn_pool = AttentionPoolLatent(width, mlp_ratio)

    def forward(self, x):  # forward_features + ignore_head
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class CLIPVisionTower(nn.Module):
    def __init__(
        self, model_name: str, image_size: int = 384, select_layer: int = -1, pixel_mean=None, pixel_std=None, **_
    ):
        super().__init__()
        cfg = dict(SIGLIP_TABLE[model_name])
        layers = min(cfg["layers"], cfg["layers"] + select_layer + 1 if select_layer <= 0 else select_layer)
        self.vision_tower = VisionTransformer(
            image_size, cfg["patch_size"], cfg["width"], layers, cfg["heads"], cfg["mlp_ratio"]
        )
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std

    def forward(self, images):
        if self.pixel_mean is not None:
            mean = torch.tensor(self.pixel_mean).view(1, 3, 1, 1)
            images = (images - mean) / torch.tensor(self.pixel_std).view(1, 3, 1, 1)
        return self.vision_tower(images)


# ----------------------------------------------------------------------------- projectors, head


class MlpProjector(nn.Module):
    def __init__(self, input_dim: int, n_embed: int, depth: int, projector_type: str = "mlp_gelu", **_):
        super().__init__()
        assert projector_type == "mlp_gelu"
        modules = [nn.Linear(input_dim, n_embed)]
        for _ in range(1, depth):
            modules += [nn.GELU(), nn.Linear(n_embed, n_embed)]
        self.layers = nn.Sequential(*modules)

    def forward(self, x):
        return self.layers(x)


class VisionHead(nn.Module):
    def __init__(self, n_embed: int, image_token_embed: int, image_token_size: int):
        super().__init__()
        self.output_mlp_projector = nn.Linear(n_embed, image_token_embed)
        self.vision_activation = nn.GELU()
        self.vision_head = nn.Linear(image_token_embed, image_token_size)

    def forward(self, x):
        return self.vision_head(self.vision_activation(self.output_mlp_projector(x)))


# ----------------------------------------------------------------------------- LlamaGen VQ


def swish(x):
    return x * torch.sigmoid(x)


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww)) * c**-0.5
        w = F.softmax(w, dim=2)
        out = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), value=0))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], z_channels: int, num_res_blocks: int):
        super().__init__()
        self.num_res_blocks, levels = num_res_blocks, len(ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_blocks = nn.ModuleList()
        for i in range(levels):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            cin, cout = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(cin, cout))
                cin = cout
                if i == levels - 1:
                    block.attn.append(AttnBlock(cin))
            if i != levels - 1:
                block.downsample = Downsample(cin)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin)])
        self.norm_out, self.conv_out = group_norm(cin), nn.Conv2d(cin, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, block in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks):
                h = block.res[j](h)
                if len(block.attn) > 0:
                    h = block.attn[j](h)
            if i != len(self.conv_blocks) - 1:
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], z_channels: int, num_res_blocks: int):
        super().__init__()
        self.num_res_blocks, levels = num_res_blocks, len(ch_mult)
        cin = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin)])
        self.conv_blocks = nn.ModuleList()
        for i in range(levels):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            cout = ch * ch_mult[levels - i - 1]
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(cin, cout))
                cin = cout
                if i == 0:
                    block.attn.append(AttnBlock(cin))
            if i != levels - 1:
                block.upsample = Upsample(cin)
            self.conv_blocks.append(block)
        self.norm_out, self.conv_out = group_norm(cin), nn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for i, block in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks + 1):
                h = block.res[j](h)
                if len(block.attn) > 0:
                    h = block.attn[j](h)
            if i != len(self.conv_blocks) - 1:
                h = block.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.register_buffer("codebook_used", nn.Parameter(torch.zeros(65536)))

    def indices(self, z):
        """Nearest code of each position, both sides l2-normalised (codebook_l2_norm=True)."""
        z = F.normalize(torch.einsum("b c h w -> b h w c", z).reshape(-1, z.shape[1]), p=2, dim=-1)
        embedding = F.normalize(self.embedding.weight, p=2, dim=-1)
        d = (z**2).sum(1, keepdim=True) + (embedding**2).sum(1) - 2 * z @ embedding.t()
        return d.argmin(dim=1)

    def get_codebook_entry(self, indices, shape):
        z_q = F.normalize(self.embedding.weight, p=2, dim=-1)[indices]
        return z_q.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(
        self,
        ch: int,
        ch_mult: list[int],
        z_channels: int,
        num_res_blocks: int,
        codebook_size: int,
        codebook_embed_dim: int,
    ):
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, z_channels, num_res_blocks)
        self.decoder = Decoder(ch, ch_mult, z_channels, num_res_blocks)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    def encode_ids(self, x):
        return self.quantize.indices(self.quant_conv(self.encoder(x))).view(x.shape[0], -1)

    def decode_code(self, codes, shape):
        return self.decoder(self.post_quant_conv(self.quantize.get_codebook_entry(codes, shape)))


# ----------------------------------------------------------------------------- the whole model


class MultiModalityCausalLM(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.vision_model = CLIPVisionTower(**config["vision_config"]["params"])
        self.aligner = MlpProjector(**config["aligner_config"]["params"])
        self.gen_vision_model = VQModel(**VQ_TABLE[config["gen_vision_config"]["cls"]])  # VQ_16(): no kwargs
        self.gen_aligner = MlpProjector(**config["gen_aligner_config"]["params"])
        self.gen_head = VisionHead(**config["gen_head_config"]["params"])
        gen = config["gen_vision_config"]["params"]
        self.gen_embed = nn.Embedding(gen["image_token_size"], gen["n_embed"])
        language = {k: v for k, v in config["language_config"].items() if k != "model_type"}
        self.language_model = LlamaForCausalLM(LlamaConfig(**language))

    def prepare_inputs_embeds(self, input_ids, pixel_values, images_seq_mask, images_emb_mask):
        b, n = pixel_values.shape[:2]
        images_embeds = self.aligner(self.vision_model(pixel_values.flatten(0, 1)))
        images_embeds = images_embeds.reshape(b, n * images_embeds.shape[1], -1)
        images_emb_mask = images_emb_mask.reshape(b, -1)
        input_ids = input_ids.clone()
        input_ids[input_ids < 0] = 0
        embeds = self.language_model.get_input_embeddings()(input_ids)
        embeds[images_seq_mask] = images_embeds[images_emb_mask]
        return embeds

    def prepare_gen_img_embeds(self, ids):
        return self.gen_aligner(self.gen_embed(ids))


# ----------------------------------------------------------------------------- prompts and loops


def sft_prompt(conversation: list[dict], system_prompt: str) -> str:
    """conversation.py's DeepSeek style + apply_sft_template_for_multi_turn_prompts (role strings from the messages)."""
    seps = ["\n\n", "<｜end▁of▁sentence｜>"]
    ret = system_prompt + seps[0] if system_prompt else ""
    for i, message in enumerate(conversation):
        content = message["content"].strip()
        ret += f"{message['role']}: {content}{seps[i % 2]}" if content else f"{message['role']}:"
    return ret.strip()


def process_one(raw_tokenizer, prompt: str, ids: dict, num_image_tokens: int) -> list[int]:
    """VLChatProcessor.process_one: tokenizer.encode (BOS first), each image tag -> start + N tags + end."""
    out = [ids["bos"]]
    for token in raw_tokenizer.encode(prompt, add_special_tokens=False).ids:
        out += [ids["start"]] + [ids["image"]] * num_image_tokens + [ids["end"]] if token == ids["image"] else [token]
    return out


def chat_prompt_ids(
    raw_tokenizer, question: str, roles: tuple[str, str], ids: dict, num_image_tokens: int
) -> list[int]:
    """inference.py / the README's understanding example: one image and a question under the roles the
    script writes (as text, whatever the tokenizer makes of them), the processor's system prompt."""
    prompt = sft_prompt(
        [{"role": roles[0], "content": f"<image_placeholder>\n{question}"}, {"role": roles[1], "content": ""}],
        SYSTEM_PROMPT,
    )
    return process_one(raw_tokenizer, prompt, ids, num_image_tokens)


def generation_prompt_ids(raw_tokenizer, prompt: str, roles: tuple[str, str], bos_id: int) -> list[int]:
    """generation_inference.py / demo/app_januspro.py: the SFT text with system_prompt="" and the
    image_start_tag appended, encoded at once (BOS first)."""
    text = sft_prompt([{"role": roles[0], "content": prompt}, {"role": roles[1], "content": ""}], "")
    return [bos_id] + raw_tokenizer.encode(text + "<begin_of_image>", add_special_tokens=False).ids


@torch.no_grad()
def greedy_text(model: MultiModalityCausalLM, inputs_embeds, steps: int, eos_id: int) -> list[int]:
    """inference.py: language_model.generate(inputs_embeds, do_sample=False)."""
    out = model.language_model.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=torch.ones(inputs_embeds.shape[:2]),
        max_new_tokens=steps,
        do_sample=False,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        use_cache=True,
    )
    return out[0].tolist()


@torch.no_grad()
def greedy_image_codes(
    model: MultiModalityCausalLM, prompt_ids: list[int], pad_id: int, cfg_weight: float, steps: int
) -> torch.Tensor:
    """generation_inference.py's loop (parallel_size 1) with argmax in place of multinomial."""
    tokens = torch.tensor([prompt_ids, prompt_ids])
    tokens[1, 1:-1] = pad_id
    embeds = model.language_model.get_input_embeddings()(tokens)
    # the KV-cache argument is `cache` in transformers >= 5.24, `past_key_values` before
    kw = "cache" if "cache" in inspect.signature(model.language_model.model.forward).parameters else "past_key_values"
    past, codes = None, []
    for _ in range(steps):
        out = model.language_model.model(inputs_embeds=embeds, use_cache=True, **{kw: past})
        past = out[kw]
        logits = model.gen_head(out.last_hidden_state[:, -1, :])
        logits = logits[1:2] + cfg_weight * (logits[0:1] - logits[1:2])
        nxt = logits.argmax(dim=-1)
        codes.append(int(nxt))
        embeds = model.prepare_gen_img_embeds(torch.cat([nxt, nxt])).unsqueeze(1)
    return torch.tensor(codes)
