#!/usr/bin/env python3
"""The small model that `make run` serves and the API tests use: a complete Qwen-Image
diffusers folder (model_index.json, tokenizer/, text_encoder/, transformer/, scheduler/, vae/)
with seeded random weights stored in bf16, about 1 MB. Its images are noise: it exists so that the service
runs end to end on any machine with no download. Point [model] path at a real Qwen-Image folder
for real images.

    <venv>/bin/python tools/golden/make_tiny_model.py [OUT]     (default: models/tiny-qwen-image)

Widths: the text encoder of tests/golden/text_tiny (hidden 16, 2 layers; LM head tied), the
transformer of tests/golden/sample_tiny (3 heads x 16, 2 layers, text width 16, 2x2 patches of
16 latent channels), Qwen-Image's own scheduler config, and a VAE with the real model's layout
(z_dim 16, four levels: 8x spatial factor, latents mean/std of Qwen-Image) at base_dim 8.
The tokenizer is the small fixture (tests/fixtures/qwen2-tokenizer-small)."""
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_qwen_image import (SAMPLE_DIT_CONFIG, SAMPLE_VAE_CONFIG, SCHED_REAL,  # noqa: E402
                            reinit_parameters as reinit_dit, setup_determinism)
from gen_text_encoder import CASES as TEXT_CASES, reinit_parameters as reinit_text  # noqa: E402

from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,  # noqa: E402
                       QwenImagePipeline, QwenImageTransformer2DModel)
from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def reinit_vae(model, seed):
    """Seeded values for every VAE parameter; RMS gains near 1, conv weights 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".bias"):
                p.copy_(0.05 * noise)
            elif name.endswith("gamma") or p.dim() == 1:
                p.copy_(1.0 + 0.1 * noise.view(p.shape))
            else:
                p.copy_(noise / (p[0].numel() ** 0.5))


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "models" / "tiny-qwen-image"
    setup_determinism()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "tokenizer").mkdir()
    fixture = REPO / "tests" / "fixtures" / "qwen2-tokenizer-small"
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(fixture / f, out / "tokenizer" / f)
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")

    spec = TEXT_CASES["text_tiny"]
    text_config = dict(spec["text_config"], vocab_size=len(tokenizer),
                       bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                       eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    config = Qwen2_5_VLConfig(text_config=text_config, vision_config=spec["vision_config"],
                              hidden_size=spec["hidden_size"], vocab_size=len(tokenizer),
                              tie_word_embeddings=True,
                              vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
                              image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
                              video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"))
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    reinit_text(text_encoder, 200)

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(**SAMPLE_DIT_CONFIG)
    reinit_dit(transformer, seed=201)
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(**SAMPLE_VAE_CONFIG)
    reinit_vae(vae, 202)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHED_REAL)

    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)
    # bf16 on disk, as real checkpoints ship (the loaders convert to f32): half the bytes
    pipe.to(torch.bfloat16)
    pipe.save_pretrained(out, safe_serialization=True)
    # save_pretrained writes the tokenizer's own files too; keep the folder as a real one ships it
    for f in sorted((out / "tokenizer").iterdir()):
        if f.name not in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            f.unlink()
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(fixture / f, out / "tokenizer" / f)
    (out / "README.md").write_text(
        "# tiny-qwen-image\n\nA Qwen-Image diffusers folder with seeded random weights, made by\n"
        "tools/golden/make_tiny_model.py: `make run` serves it and the API tests use it.\n"
        "**Its images are noise.** Point `[model] path` in the config at a real Qwen-Image\n"
        "folder for real images.\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
