#!/usr/bin/env python3
"""Golden vectors for diffusiond's Qwen-Image port, computed by the reference implementation
(diffusers + torch, versions pinned in requirements.txt beside this file), float32 on the CPU.

    python tools/golden/gen_qwen_image.py [--out DIR]      (default: tests/golden of this repo)

writes four cases, the model ones laid out as diffusers folders so that the C loader reads the
real layout (README.md beside this file lists every tensor):
    dit_tiny/     QwenImageTransformer2DModel with diffusers' own tiny test config, one forward
    dit_cfg2/     a second config: 2 heads x 32, 3 layers, zero_cond_t, batch 2 with padded
                  text, two images (generated + condition) in the image stream
    scheduler/    FlowMatchEulerDiscreteScheduler schedules as the pipeline sets them, and Euler steps
                  (<variant>.json configs and sigmas.safetensors)
    sample_tiny/  QwenImagePipeline's denoising loop with true CFG, 4 steps
Everything that is computed is computed from the files just written (weights reloaded with
from_pretrained, inputs read back from io.safetensors), by the functions that check_golden.py
calls again to prove that the vectors reproduce bit for bit.
"""

import argparse
import inspect
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

# Read by diffusers at import: "native" is torch's scaled_dot_product_attention.
os.environ["DIFFUSERS_ATTN_BACKEND"] = "native"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage.pipeline_qwenimage import (  # noqa: E402
    calculate_shift,
    retrieve_timesteps,
)

REPO = Path(__file__).resolve().parents[2]

# tests/models/transformers/test_models_transformer_qwenimage.py, get_init_dict() (the sdist of
# the pinned diffusers ships no tests; read at diffusers commit 58eb52c0803e, which has the same
# QwenImageTransformer2DModel as the pinned release apart from a Neuron-only RoPE path).
DIT_TINY_CONFIG = dict(
    patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
    num_attention_heads=4, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
)
# Every width differs from the tiny one; head_dim 32 = 8 + 12 + 12.
DIT_CFG2_CONFIG = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=3, attention_head_dim=32,
    num_attention_heads=2, joint_attention_dim=24, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    zero_cond_t=True,
)
# tests/pipelines/qwenimage/test_qwenimage.py's transformer (3 heads x 16), widened to the real
# model's 16 latent channels (in 64 = 16 x 2 x 2, out 16) so that latents have the real layout.
SAMPLE_DIT_CONFIG = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
    num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
)
# Qwen/Qwen-Image scheduler/scheduler_config.json.
SCHED_REAL = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
)
SCHED_VARIANTS = {
    "exp": SCHED_REAL,
    "shift3": dict(SCHED_REAL, use_dynamic_shifting=False, shift=3.0, shift_terminal=None),
    "linear": dict(SCHED_REAL, time_shift_type="linear"),
}
SCHED_STEPS = (1, 2, 20, 50)
SCHED_SEQ_LENS = (6, 256, 1024, 4096, 8192, 16384)  # 6: sample_tiny; 16384: past max_image_seq_len
EULER_CASE = dict(variant="exp", steps=20, seq=4096, indices=[0, 9, 19], shape=[1, 6, 64])
# A tiny VAE whose only use is its config: latents_mean/std of the real model and a spatial
# factor of 8 (three temporal-downsample flags), as the pipeline derives vae_scale_factor.
SAMPLE_VAE_CONFIG = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[False, True, True],
    latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160],
)
SAMPLE_CALL = dict(height=32, width=48, num_inference_steps=4, true_cfg_scale=4.0, max_sequence_length=512)

DIT_CASES = ("dit_tiny", "dit_cfg2")


def versions():
    return (f"diffusers=={diffusers.__version__} torch=={torch.__version__.split('+')[0]} "
            f"transformers=={transformers.__version__} safetensors=={safetensors.__version__} "
            f"numpy=={np.__version__}")


def setup_determinism():
    """Same numbers on every run on one kind of CPU: one thread (a reduction's order can depend
    on the thread count), deterministic kernels, float32 throughout."""
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def supports_zero_cond_t():
    return "zero_cond_t" in inspect.signature(QwenImageTransformer2DModel.__init__).parameters


def reinit_parameters(model, seed):
    """Seeded normal values for every parameter. diffusers' own init leaves some layers at zero
    or one (biases, norm gains), which would let a C port skip them and still pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".bias"):
                p.copy_(0.05 * noise)
            elif p.dim() == 1:  # RMSNorm gains: txt_norm, norm_q/k, norm_added_q/k
                p.copy_(1.0 + 0.1 * noise)
            else:
                # Linear weights (out, in), std gain/sqrt(in): activations stay near unit size.
                # The timestep path and the modulations get more gain so that the gates are
                # O(0.5) and every block changes the streams by 35-115 % (at 1.0 it is ~5 %).
                timed = name.startswith(("time_text_embed.", "norm_out.")) or "_mod." in name
                p.copy_(noise * ((1.5 if timed else 1.0) / math.sqrt(p.shape[1])))


def write_tensors(path, tensors, metadata):
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}  # no shared storage
    save_file(tensors, str(path), metadata={k: str(v) for k, v in metadata.items()})
    # safetensors keeps the metadata in a hash map, so its key order, and with it the file's
    # bytes, change from run to run: sort the keys so that regenerating leaves git clean.
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:
        raise RuntimeError(f"{path}: the sorted header does not fit where the original was")
    path.write_bytes(data[:8] + text + b" " * (n - len(text)) + data[8 + n:])


def read_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def same_bits(a, b):
    """Bit-for-bit equality (NaN equals NaN of the same bits)."""
    a, b = a.detach().contiguous(), b.detach().contiguous()
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def _img_shapes_from_json(shapes):
    # The pipelines pass a list (one entry per sample) of lists of (frames, h, w) tuples.
    return [[tuple(s) for s in sample] for sample in shapes]


# ---------------------------------------------------------------- transformer forward

def run_dit(model, io, call):
    """One QwenImageTransformer2DModel.forward as described by `call` (the JSON stored in
    io.safetensors' metadata), with forward hooks that keep the intermediates."""
    cap = {}
    hooks = []

    def keep(name):
        def hook(_module, _args, out):
            cap[name] = out.detach().clone()
        return hook

    def keep_block(i):
        def hook(_module, _args, out):  # a block returns (encoder_hidden_states, hidden_states)
            cap[f"block.{i}.txt"] = out[0].detach().clone()
            cap[f"block.{i}.img"] = out[1].detach().clone()
        return hook

    def keep_rope(_module, _args, out):  # complex64 (S, head_dim/2) -> float32 (S, head_dim/2, 2)
        cap["rope.img"] = torch.view_as_real(out[0]).clone()
        cap["rope.txt"] = torch.view_as_real(out[1]).clone()

    hooks.append(model.time_text_embed.register_forward_hook(keep("temb")))
    hooks.append(model.img_in.register_forward_hook(keep("img_in")))
    hooks.append(model.txt_in.register_forward_hook(keep("txt_in")))
    hooks.append(model.pos_embed.register_forward_hook(keep_rope))
    for i, block in enumerate(model.transformer_blocks):
        hooks.append(block.register_forward_hook(keep_block(i)))
    hooks.append(model.norm_out.register_forward_hook(keep("norm_out")))
    try:
        with torch.no_grad():
            out = model(
                hidden_states=io[call["hidden_states"]],
                encoder_hidden_states=io[call["encoder_hidden_states"]],
                encoder_hidden_states_mask=io[call["encoder_hidden_states_mask"]],
                timestep=io[call["timestep"]],
                img_shapes=_img_shapes_from_json(call["img_shapes"]),
                return_dict=False,
            )[0]
    finally:
        for h in hooks:
            h.remove()
    cap["output"] = out.detach().clone()
    return cap


def load_dit(folder):
    model = QwenImageTransformer2DModel.from_pretrained(str(folder / "transformer"), torch_dtype=torch.float32)
    return model.eval()


def dit_inputs(case):
    """Inputs of the two forward cases, drawn from seeded generators."""
    g = torch.Generator().manual_seed(1000 + DIT_CASES.index(case))
    if case == "dit_tiny":
        cfg = DIT_TINY_CONFIG
        batch, txt_lens, s_txt = 1, [8], 8
        img_shapes = [[(1, 4, 6)]] * batch          # non-square: rows and columns can't be swapped
        t_raw = [666.0]
    else:
        cfg = DIT_CFG2_CONFIG
        batch, txt_lens, s_txt = 2, [7, 4], 7
        img_shapes = [[(1, 4, 6), (1, 3, 5)]] * batch  # generated image, then a condition image
        t_raw = [900.0, 300.0]
    s_img = sum(math.prod(s) for s in img_shapes[0])
    hidden = torch.randn(batch, s_img, cfg["in_channels"], generator=g)
    text = torch.randn(batch, s_txt, cfg["joint_attention_dim"], generator=g)
    mask = torch.zeros(batch, s_txt, dtype=torch.float32)
    for b, n in enumerate(txt_lens):
        mask[b, :n] = 1.0
        text[b, n:] = 0.0  # the pipeline pads prompt_embeds with zero vectors
    # As the pipeline makes it: t.expand(B).to(latents.dtype) / 1000, in float32.
    timestep = torch.tensor(t_raw, dtype=torch.float32) / 1000
    io = {
        "hidden_states": hidden,
        "encoder_hidden_states": text,
        "encoder_hidden_states_mask": mask,
        "timestep": timestep,
        "img_shapes": torch.tensor(img_shapes[0], dtype=torch.int64),
    }
    call = {
        "function": "QwenImageTransformer2DModel.forward",
        "hidden_states": "hidden_states",
        "encoder_hidden_states": "encoder_hidden_states",
        "encoder_hidden_states_mask": "encoder_hidden_states_mask",
        "timestep": "timestep",
        "timestep_values": timestep.tolist(),
        "timestep_raw": t_raw,
        "img_shapes": img_shapes,
        "txt_lens": txt_lens,
        "guidance": None,
        "attention_kwargs": None,
        "return_dict": False,
    }
    return cfg, io, call


def gen_dit_case(out, case):
    cfg, io, call = dit_inputs(case)
    cfg = dict(cfg)
    if "zero_cond_t" in cfg and not supports_zero_cond_t():
        del cfg["zero_cond_t"]
        call["note"] = "zero_cond_t not supported by this diffusers version; left out"
    folder = out / case
    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(**cfg)
    reinit_parameters(model, seed=DIT_CASES.index(case))
    model.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    outputs = run_dit(load_dit(folder), io, call)
    meta = {"case": case, "call": json.dumps(call), "reference": versions(),
            "generator": "tools/golden/gen_qwen_image.py"}
    write_tensors(folder / "io.safetensors", {**io, **outputs}, meta)
    return outputs


# ---------------------------------------------------------------- scheduler

def pipeline_schedule(scheduler, steps, image_seq_len):
    """QwenImagePipeline.__call__ step 5: sigmas, mu, retrieve_timesteps(sigmas=, mu=)."""
    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(
        image_seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # steps=1 with shift_terminal divides 0 by 0 (see README)
        timesteps, _ = retrieve_timesteps(scheduler, steps, None, sigmas=sigmas, mu=mu)
    return scheduler.sigmas.clone(), timesteps.clone(), mu


def load_scheduler(path):
    """From a diffusers folder (scheduler_config.json inside) or a config file."""
    return FlowMatchEulerDiscreteScheduler.from_config(FlowMatchEulerDiscreteScheduler.load_config(str(path)))


def run_schedules(folder, io):
    """Every schedule of the scheduler case, and the Euler steps on the given inputs."""
    res = {}
    for variant in SCHED_VARIANTS:
        sched = load_scheduler(folder / f"{variant}.json")
        for n in SCHED_STEPS:
            for seq in SCHED_SEQ_LENS:
                sigmas, timesteps, _ = pipeline_schedule(sched, n, seq)
                res[f"{variant}.n{n}.seq{seq}.sigmas"] = sigmas
                res[f"{variant}.n{n}.seq{seq}.timesteps"] = timesteps
    e = EULER_CASE
    sched = load_scheduler(folder / f"{e['variant']}.json")
    for k in e["indices"]:
        _, timesteps, _ = pipeline_schedule(sched, e["steps"], e["seq"])
        sched.set_begin_index(k)
        sample = io[f"euler.k{k}.sample"]
        model_output = io[f"euler.k{k}.model_output"]
        res[f"euler.k{k}.prev_sample"] = sched.step(model_output, timesteps[k], sample, return_dict=False)[0]
    return res


def euler_inputs():
    g = torch.Generator().manual_seed(2000)
    io = {}
    for k in EULER_CASE["indices"]:
        io[f"euler.k{k}.sample"] = torch.randn(EULER_CASE["shape"], generator=g)
        io[f"euler.k{k}.model_output"] = torch.randn(EULER_CASE["shape"], generator=g)
    return io


def gen_scheduler_case(out):
    folder = out / "scheduler"
    folder.mkdir(parents=True, exist_ok=True)
    for variant, cfg in SCHED_VARIANTS.items():
        FlowMatchEulerDiscreteScheduler(**cfg).to_json_file(str(folder / f"{variant}.json"))
    io = euler_inputs()
    outputs = run_schedules(folder, io)
    call = {
        "schedule": "sigmas = np.linspace(1.0, 1/N, N); mu = calculate_shift(seq, base_image_seq_len, "
                    "max_image_seq_len, base_shift, max_shift); retrieve_timesteps(scheduler, N, None, "
                    "sigmas=sigmas, mu=mu); save scheduler.sigmas (N+1) and scheduler.timesteps (N)",
        "variants": list(SCHED_VARIANTS), "steps": list(SCHED_STEPS), "image_seq_lens": list(SCHED_SEQ_LENS),
        "euler": dict(EULER_CASE, call="set_timesteps as above; set_begin_index(k); "
                      "step(model_output, timesteps[k], sample, return_dict=False)[0]"),
    }
    # mu as the exact double (repr), kept out of the tensors: it is a float64
    mus = {}
    for v in SCHED_VARIANTS:
        for seq in SCHED_SEQ_LENS:
            mus[f"{v}.seq{seq}"] = repr(pipeline_schedule(load_scheduler(folder / f"{v}.json"), 1, seq)[2])
    meta = {"case": "scheduler", "call": json.dumps(call), "mu": json.dumps(mus), "reference": versions(),
            "generator": "tools/golden/gen_qwen_image.py"}
    write_tensors(folder / "sigmas.safetensors", {**io, **outputs}, meta)
    return outputs


# ---------------------------------------------------------------- sampling loop

def load_sample_pipeline(folder):
    transformer = load_dit(folder)
    scheduler = load_scheduler(folder / "scheduler")
    torch.manual_seed(0)  # the VAE's weights are never used: decode is replaced below
    vae = AutoencoderKLQwenImage.from_config(AutoencoderKLQwenImage.load_config(str(folder / "vae")))
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                             transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_sample(folder, io, call):
    """QwenImagePipeline.__call__ itself, with hooks: the transformer's input timestep and output
    of every call (cond, then uncond), the latents after every step (callback_on_step_end), and
    the latents handed to vae.decode (replaced by a stub: only its input matters here). A replica
    of the loop's CFG + Euler math, fed with the captured transformer outputs, must land on the
    same bits; it yields noise_pred, which the pipeline keeps to itself."""
    pipe = load_sample_pipeline(folder)
    calls, steps, cap = [], [], {}

    def keep_call(_module, _args, kwargs, out):
        calls.append((kwargs["timestep"].clone(), out[0].clone()))

    def on_step_end(_pipe, _i, _t, kw):
        steps.append(kw["latents"].clone())
        return {}

    def decode_stub(z, return_dict=True):
        cap["denorm_latents"] = z.clone()
        b, _, f, h, w = z.shape
        return (torch.zeros(b, 3, f, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor),)

    pipe.vae.decode = decode_stub
    hook = pipe.transformer.register_forward_hook(keep_call, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(
                prompt_embeds=io["prompt_embeds"], prompt_embeds_mask=io["prompt_embeds_mask"],
                negative_prompt_embeds=io["negative_prompt_embeds"],
                negative_prompt_embeds_mask=io["negative_prompt_embeds_mask"],
                latents=io["latents"], height=call["height"], width=call["width"],
                num_inference_steps=call["num_inference_steps"], true_cfg_scale=call["true_cfg_scale"],
                max_sequence_length=call["max_sequence_length"], output_type="pt",
                callback_on_step_end=on_step_end,
            )
    finally:
        hook.remove()

    n = call["num_inference_steps"]
    if len(calls) != 2 * n or len(steps) != n:
        raise RuntimeError(f"expected {2 * n} transformer calls and {n} steps, got {len(calls)}, {len(steps)}")
    res = {"sigmas": pipe.scheduler.sigmas.clone(), "timesteps": pipe.scheduler.timesteps.clone()}

    # The replica: same scheduler config, same schedule, QwenImagePipeline's CFG lines.
    sched = load_scheduler(folder / "scheduler")
    _, timesteps, _ = pipeline_schedule(sched, n, io["latents"].shape[1])
    sched.set_begin_index(0)
    latents, s = io["latents"], call["true_cfg_scale"]
    for i, t in enumerate(timesteps):
        (t_cond, cond), (t_uncond, uncond) = calls[2 * i], calls[2 * i + 1]
        comb = uncond + s * (cond - uncond)
        pred = comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        latents = sched.step(pred, t, latents, return_dict=False)[0]
        if not (same_bits(latents, steps[i]) and same_bits(t_cond, t_uncond)):
            raise RuntimeError(f"replica of the denoising loop differs from the pipeline at step {i}")
        res[f"step.{i}.timestep"] = t_cond
        res[f"step.{i}.noise_cond"] = cond
        res[f"step.{i}.noise_uncond"] = uncond
        res[f"step.{i}.noise_pred"] = pred
        res[f"step.{i}.latents"] = steps[i]
    res["final_latents"] = steps[-1]

    # __call__'s decode preamble: unpack, then x / (1/std) + mean.
    vae_cfg = pipe.vae.config
    z = pipe._unpack_latents(steps[-1], call["height"], call["width"], pipe.vae_scale_factor)
    mean = torch.tensor(vae_cfg.latents_mean).view(1, vae_cfg.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae_cfg.latents_std).view(1, vae_cfg.z_dim, 1, 1, 1)
    if not same_bits(z / inv_std + mean, cap["denorm_latents"]):
        raise RuntimeError("replica of the latent de-normalisation differs from the pipeline")
    res["denorm_latents"] = cap["denorm_latents"]
    return res


def sample_inputs():
    g = torch.Generator().manual_seed(3000)
    c = SAMPLE_CALL
    dim = SAMPLE_DIT_CONFIG["joint_attention_dim"]
    seq = (c["height"] // 16) * (c["width"] // 16)
    return {
        "prompt_embeds": torch.randn(1, 6, dim, generator=g),
        "prompt_embeds_mask": torch.ones(1, 6, dtype=torch.float32),
        "negative_prompt_embeds": torch.randn(1, 4, dim, generator=g),
        "negative_prompt_embeds_mask": torch.ones(1, 4, dtype=torch.float32),
        # Packed (B, (h/2)(w/2), 16*4), as prepare_latents returns them.
        "latents": torch.randn(1, seq, SAMPLE_DIT_CONFIG["in_channels"], generator=g),
    }


def gen_sample_case(out):
    folder = out / "sample_tiny"
    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(**SAMPLE_DIT_CONFIG)
    reinit_parameters(model, seed=10)
    model.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(**SCHED_REAL).save_config(str(folder / "scheduler"))
    AutoencoderKLQwenImage.from_config(SAMPLE_VAE_CONFIG).save_config(str(folder / "vae"))
    load_sample_pipeline(folder).save_config(str(folder))  # model_index.json
    io = sample_inputs()
    call = dict(SAMPLE_CALL)
    outputs = run_sample(folder, io, call)
    sched = load_scheduler(folder / "scheduler")
    _, _, mu = pipeline_schedule(sched, call["num_inference_steps"], io["latents"].shape[1])
    call.update({
        "function": "QwenImagePipeline.__call__",
        "prompt_embeds": "prompt_embeds", "prompt_embeds_mask": "prompt_embeds_mask",
        "negative_prompt_embeds": "negative_prompt_embeds",
        "negative_prompt_embeds_mask": "negative_prompt_embeds_mask",
        "latents": "latents", "output_type": "pt", "num_images_per_prompt": 1,
        "image_seq_len": int(io["latents"].shape[1]), "mu": repr(mu),
        "img_shapes": [[(1, call["height"] // 16, call["width"] // 16)]],
        "vae_scale_factor": 8,
    })
    meta = {"case": "sample_tiny", "call": json.dumps(call), "reference": versions(),
            "generator": "tools/golden/gen_qwen_image.py"}
    for key in ("height", "width", "num_inference_steps", "true_cfg_scale"):  # plain, for C
        meta[key] = call[key]
    write_tensors(folder / "io.safetensors", {**io, **outputs}, meta)
    return outputs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden", help="output folder")
    args = ap.parse_args(argv)
    setup_determinism()
    t0 = time.monotonic()
    for case in DIT_CASES:
        gen_dit_case(args.out, case)
    gen_scheduler_case(args.out)
    gen_sample_case(args.out)
    print(f"gen_qwen_image: wrote {args.out} in {time.monotonic() - t0:.1f} s ({versions()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
