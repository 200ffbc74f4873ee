#!/usr/bin/env python3
"""Golden vectors for diffusiond's Qwen2.5-VL text encoder and the Qwen-Image prompt path,
computed by the reference (transformers + diffusers + torch, pinned in requirements.txt),
float32 on the CPU.

    python tools/golden/gen_text_encoder.py [--out DIR]   (default: tests/golden of this repo)

Each case is a diffusers-style folder holding tokenizer/ (the small Qwen2 tokenizer fixture,
tests/fixtures/qwen2-tokenizer-small) and text_encoder/ (Qwen2_5_VLForConditionalGeneration:
config.json and model.safetensors, vision tower and LM head included, as in a real folder),
plus io.safetensors with:
    input_ids, attention_mask   [B, S] what the pipeline's tokenizer call returns (padded)
    hidden.<i>                  [B, S, D] the text model's hidden states: 0 = embeddings,
                                i = after decoder layer i, the last = after the final norm
                                (text_gqa: 0 and the last only)
    prompt_embeds, prompt_mask  [B, L, D], [B, L]: QwenImagePipeline._get_qwen_prompt_embeds
    sliced_embeds, sliced_mask  the same after encode_prompt's max_sequence_length slice
and metadata: the prompts (JSON), max_sequence_length, versions.

Cases:
    pipeline_tiny/  io.safetensors only: QwenImagePipeline.__call__ from prompt strings (a
                prompt and a negative prompt, true CFG, 3 steps, given initial latents) on the
                folder that tests/golden/sample_tiny (transformer, scheduler, vae config; written
                by gen_qwen_image.py, run that first) and text_tiny (tokenizer, text_encoder)
                make together; the final packed latents. The CLI test assembles the same folder.
    text_tiny/  the text encoder of diffusers' QwenImagePipeline tests (hidden 16, 2 layers,
                2 heads, 2 kv heads, mrope_section [1,1,2]), f32 weights; 3 prompts
    text_gqa/   hidden 64, 4 heads x 16, 2 kv heads (GQA), 3 layers, intermediate 96, bf16
                weights as real checkpoints ship them, LM head tied (absent from the file);
                3 prompts, one long, max_sequence_length 64 (the slice cuts it)
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_qwen_image import load_sample_pipeline, setup_determinism, versions, write_tensors  # noqa: E402

from diffusers import QwenImagePipeline  # noqa: E402
from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "tests" / "fixtures" / "qwen2-tokenizer-small"

LONG_PROMPT = (
    "A quiet harbour town at dawn: fishing boats painted red, blue and yellow rest against a "
    "stone pier, gulls circle above the masts, and a narrow street of white houses with green "
    "shutters climbs the hill behind them. Fog lies low on the water; a lighthouse on the far "
    "rock still shows its lamp. In the foreground an old man in a wool cap mends a net, a black "
    "and white cat watches him from a crate of lemons, and a chalkboard outside the cafe reads "
    "\"Fresh bread 7am\". Soft, warm light, long shadows, film grain, 35mm photograph."
)

CASES = {
    "text_tiny": dict(
        # tests/pipelines/qwenimage/test_qwenimage.py, get_dummy_components(), with the vocabulary
        # of the small tokenizer fixture instead of 152064 rows.
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2,
                         rope_scaling=dict(mrope_section=[1, 1, 2], rope_type="default", type="default"),
                         rope_theta=1000000.0),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        hidden_size=16,
        tie_word_embeddings=False,
        dtype=torch.float32,
        prompts=["dance monkey", "A cat sitting on a windowsill, watching the rain.", ""],
        every_layer=True,
        max_sequence_length=512,
    ),
    "text_gqa": dict(
        text_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling=dict(mrope_section=[2, 3, 3], rope_type="default", type="default"),
                         rope_theta=1000000.0, rms_norm_eps=1e-6),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=64),
        hidden_size=64,
        tie_word_embeddings=True,  # no lm_head in the file: the encoder never reads it
        dtype=torch.bfloat16,
        prompts=["a red bicycle leaning against a brick wall", LONG_PROMPT, "猫と犬, 🐱🐶 ½ café"],
        max_sequence_length=64,
        every_layer=False,  # the embeddings and the final norm's output only: 190 KB a layer
    ),
}


def reinit_parameters(model, seed):
    """Seeded normal values for every parameter, so that no bias or gain is left at 0 or 1 (a
    port that skipped one would still pass). Linear weights get std 1/sqrt(in) so activations
    stay near unit size through the layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif p.dim() == 1:
                p.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1] if p.dim() == 2 else p[0].numel()))


def build_case(out, name, spec, seed):
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "tokenizer").mkdir(parents=True)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, folder / "tokenizer" / f)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")

    text_config = dict(spec["text_config"], vocab_size=len(tokenizer),
                       bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                       eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    config = Qwen2_5_VLConfig(text_config=text_config, vision_config=spec["vision_config"],
                              hidden_size=spec["hidden_size"], vocab_size=len(tokenizer),
                              tie_word_embeddings=spec["tie_word_embeddings"],
                              vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
                              image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
                              video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    reinit_parameters(model, seed)
    model.to(spec["dtype"]).save_pretrained(folder / "text_encoder", safe_serialization=True)
    del model
    return folder


def run_case(folder, spec):
    """Everything from the files as written: the weights reloaded in f32."""
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        folder / "text_encoder", dtype=torch.float32, attn_implementation="sdpa").eval()
    pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=encoder, tokenizer=tokenizer,
                             transformer=None)
    prompts = spec["prompts"]
    template = pipe.prompt_template_encode
    drop = pipe.prompt_template_encode_start_idx
    with torch.no_grad():
        tok = tokenizer([template.format(p) for p in prompts], max_length=pipe.tokenizer_max_length + drop,
                        padding=True, truncation=True, return_tensors="pt")
        res = encoder(input_ids=tok.input_ids, attention_mask=tok.attention_mask, output_hidden_states=True)
        embeds, mask = pipe._get_qwen_prompt_embeds(prompts, device=torch.device("cpu"))
        sliced, sliced_mask = pipe.encode_prompt(prompts, device=torch.device("cpu"),
                                                 max_sequence_length=spec["max_sequence_length"])
    io = {"input_ids": tok.input_ids.to(torch.int64), "attention_mask": tok.attention_mask.to(torch.int64),
          "prompt_embeds": embeds.float(), "prompt_mask": mask.to(torch.int64),
          "sliced_embeds": sliced.float()}
    if sliced_mask is not None:
        io["sliced_mask"] = sliced_mask.to(torch.int64)
    last = len(res.hidden_states) - 1
    for i, h in enumerate(res.hidden_states):
        if spec["every_layer"] or i in (0, last):
            io[f"hidden.{i}"] = h.float()
    meta = {"prompts": json.dumps(prompts, ensure_ascii=False), "drop_idx": drop,
            "max_sequence_length": spec["max_sequence_length"], "layers": len(res.hidden_states) - 1,
            "padding_side": tokenizer.padding_side, "versions": versions()}
    return io, meta


PIPELINE_CALL = dict(prompt="dance monkey", negative_prompt="blurry, low quality", height=32,
                     width=48, num_inference_steps=3, true_cfg_scale=4.0, max_sequence_length=512)


def gen_pipeline_case(out):
    """The whole pipeline from prompt strings to final latents, composed from two golden folders."""
    sample, text = out / "sample_tiny", out / "text_tiny"
    pipe = load_sample_pipeline(sample)
    pipe.tokenizer = AutoTokenizer.from_pretrained(text / "tokenizer")
    pipe.text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        text / "text_encoder", dtype=torch.float32, attn_implementation="sdpa").eval()
    c = PIPELINE_CALL
    seq = (c["height"] // 16) * (c["width"] // 16)
    g = torch.Generator().manual_seed(4000)
    latents = torch.randn(1, seq, pipe.transformer.config.in_channels, generator=g)
    with torch.no_grad():
        final = pipe(**c, latents=latents, output_type="latent").images
    folder = out / "pipeline_tiny"
    folder.mkdir(exist_ok=True)
    meta = {k: (json.dumps(v) if isinstance(v, str) else v) for k, v in c.items()}
    meta.update({"folders": "transformer, scheduler, vae: sample_tiny; tokenizer, text_encoder: text_tiny",
                 "versions": versions()})
    write_tensors(folder / "io.safetensors", {"latents": latents, "final_latents": final.float()}, meta)
    print(f"pipeline_tiny: final latents {list(final.shape)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden", help="output folder")
    args = ap.parse_args(argv)
    setup_determinism()
    t0 = time.monotonic()
    for seed, (name, spec) in enumerate(CASES.items(), start=100):
        folder = build_case(args.out, name, spec, seed)
        io, meta = run_case(folder, spec)
        write_tensors(folder / "io.safetensors", io, meta)
        print(f"{name}: input_ids {list(io['input_ids'].shape)}, prompt_embeds {list(io['prompt_embeds'].shape)}, "
              f"padding {meta['padding_side']}")
    gen_pipeline_case(args.out)
    print(f"gen_text_encoder: wrote {args.out} in {time.monotonic() - t0:.1f} s ({versions()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
