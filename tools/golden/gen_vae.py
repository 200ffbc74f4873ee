#!/usr/bin/env python3
"""Golden vectors for diffusiond's Qwen-Image VAE (AutoencoderKLQwenImage), computed by the
reference (diffusers + torch, pinned in requirements.txt), float32 on the CPU, one thread.

    python tools/golden/gen_vae.py [--out DIR]    (default: tests/golden of this repo)
    python tools/golden/gen_vae.py --check        regenerate elsewhere, compare with the committed

Cases (each a folder with vae/config.json and io.safetensors):
    vae_tiny/  the VAE of diffusers' QwenImagePipeline tests (base_dim 24, z_dim 4, dim_mult
               [1, 2, 4], one residual block per level, temperal_downsample [False, True],
               latents mean 0 / std 1; spatial factor 4): decode of 6x10 latents (24x40
               pixels), encode of a 24x40 image, a tiled decode of 10x14 latents with tiles of
               24 pixels every 16, the pipeline's postprocess to float RGB and 8-bit
    vae_pipe/  base_dim 4, dim_mult [1, 2, 2, 4], one residual block, z_dim 16 and the real
               latents mean/std: tests/golden/sample_tiny's denoised latents (denorm_latents,
               written by gen_qwen_image.py: run that first) decoded and postprocessed as
               QwenImagePipeline does (pipeline_rgb8), and a 24x40 8-bit image encoded as
               QwenImageEditPipeline does (image_rgb8 -> mean -> image_latents): the CLI's
               process test (tests/process/test_generate_vae.py) checks -o and --image with it
    vae_cfg2/  four levels (three downsamplings, spatial factor 8 and temperal_downsample
               [False, True, True] as the real model), base_dim 16, dim_mult [1, 2, 2, 4],
               two residual blocks per level, z_dim 16 with the real latents mean/std:
               decode of 6x10 latents (48x80 pixels) from normalised latents through the
               pipeline's de-normalisation, encode of a 48x80 8-bit image through the
               pipeline's preprocessing and the edit pipeline's normalisation, a tiled decode
               with tiles of 32 pixels every 24, postprocess to 8-bit

The weights are not committed. diffusers' tiny test VAE alone has 4.05 M parameters (16 MB in
float32, 8 MB in half precision), over the whole size budget of these vectors, so every
parameter is instead a pure function of (seed, tensor name, element index) that the C test
recomputes bit for bit and writes to a temporary diffusers folder (tests/unit/test_vae.c):
    word  = lane (i mod 4) of Philox4x32-10 with counter (i div 4 low 32 bits, high 32 bits,
            fnv1a32(name), 0) and key (seed, 0)  (nn/philox.h's philox4x32_10)
    u     = ((word >> 8) - 2^23) * 2^-23, exact in float32, uniform in [-1, 1)
    value = a + u * b in float32 (the product rounded, then the sum), with
            biases: a = 0, b = 1/8; norm gains: a = 1, b = 1/4 (both products exact);
            kernels: a = 0, b = float32(gain * sqrt(3 / fan_in)), fan_in = in_channels x the
            spatial taps (the taps one frame sees), gain 1 (1/2 for decoder.conv_out, so that
            the decoded image mostly lies inside the clamp)
The list of (name, shape, a, b) is in io.safetensors' metadata ("weights", JSON), with the
FNV-1a-64 of all the values' bytes ("weights_fnv1a64") to prove the C side made the same
file. Every parameter is drawn: no gain left at 1, no bias at 0, and all three temporal slices
of the causal kernels differ, so a port that reads the wrong slice fails.

io.safetensors (F32 unless said; images and latents as the reference's [B, C, T, H, W]):
    latents, z                 decode input: normalised latents and z = latents / (1/std) + mean
                               (QwenImagePipeline's de-normalisation; vae_tiny: z = latents)
    output                     vae.decode(z).sample, clamped to [-1, 1]
    rgb8 (U8 [H, W, 3]), rgb   VaeImageProcessor.postprocess(output) as "pil" (np.array of it)
                               and "np" (vae_tiny only)
    trace.<module>             [C, h, w]: the output of that module during the decode or the
                               encode (post_quant_conv, decoder.conv_in, decoder.mid_block,
                               decoder.up_blocks.<i>, decoder = before the clamp,
                               encoder.conv_in, encoder.down_blocks.<j>, encoder.mid_block,
                               encoder, quant_conv), those of at most 16384 values
    image                      encode input in [-1, 1]; vae_cfg2: preprocess(image_rgb8)
    image_rgb8 (U8 [H, W, 3])  vae_cfg2: the 8-bit image
    mean                       vae.encode(image).latent_dist.mean (the edit pipelines' "argmax")
    odd_image, odd_mean        vae_tiny: the same for a 27x35 image (odd sizes: each downsample
                               takes floor((n - 2) / 2) + 1)
    image_latents              vae_cfg2: (mean - latents_mean) / latents_std
                               (QwenImageEditPipeline._encode_vae_image)
    tiled_z, tiled_output      vae.enable_tiling(tile, tile, stride, stride); vae.decode(tiled_z)
                               (tiled_decode does not clamp)
Metadata: case, versions, weights, weights_seed, weights_fnv1a64, tiling (JSON
[tile, stride]).
"""

import argparse
import filecmp
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_qwen_image import setup_determinism, versions, write_tensors  # noqa: E402

import PIL.Image  # noqa: E402
from diffusers import AutoencoderKLQwenImage  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from safetensors import safe_open  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRACE_MAX = 16384

REAL_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
             0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
REAL_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

CASES = {
    # tests/pipelines/qwenimage/test_qwenimage.py, get_dummy_components(): z_dim 4,
    # base_dim z_dim * 6 (read at diffusers commit 071190daca86)
    "vae_tiny": dict(
        config=dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                    temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
        seed=501, latent=(6, 10), tiled_latent=(10, 14), tiling=(24, 16), rgb_float=True,
        encode_from_rgb8=False, odd=(27, 35),
    ),
    # The VAE of the CLI's process test (tests/process/test_generate_vae.py): the smallest with
    # the real latent layout (z_dim 16, spatial factor 8) and latents mean/std, so that it
    # decodes sample_tiny's denoised latents; its weights are few enough (146 k) for that test
    # to draw them in pure Python.
    "vae_pipe": dict(
        config=dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 4], num_res_blocks=1,
                    temperal_downsample=[False, True, True], latents_mean=REAL_MEAN,
                    latents_std=REAL_STD),
        seed=503, pipeline=True,
    ),
    "vae_cfg2": dict(
        config=dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 4], num_res_blocks=2,
                    temperal_downsample=[False, True, True], latents_mean=REAL_MEAN,
                    latents_std=REAL_STD),
        seed=502, latent=(6, 10), tiled_latent=(6, 10), tiling=(32, 24), rgb_float=False,
        encode_from_rgb8=True,
    ),
}

# ---------------------------------------------------------------- the generated weights

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on arrays of counters (uint64 holding 32-bit words), as nn/philox.c."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3))
    for _ in range(10):
        p0 = np.uint64(PHILOX_M0) * c0
        p1 = np.uint64(PHILOX_M1) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(MASK32)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(MASK32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


# Random123's known answers, the ones tests/unit/test_qwen_image.c checks nn/philox.c with.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def fnv1a32(text):
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & MASK32
    return h


def fnv1a64(data, h=0xCBF29CE484222325):
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def draw(seed, name, shape, a, b):
    """The tensor `name` as the docstring defines it."""
    n = math.prod(shape)
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    lanes = philox4x32_10(blocks & np.uint64(MASK32), blocks >> np.uint64(32),
                          np.full_like(blocks, fnv1a32(name)), np.zeros_like(blocks),
                          seed & MASK32, seed >> 32)
    words = np.stack(lanes, axis=1).reshape(-1)[:n]
    u = ((words >> np.uint64(8)).astype(np.int64) - (1 << 23)).astype(np.float32) * np.float32(2.0 ** -23)
    v = u * np.float32(b)
    if a != 0:
        v = np.float32(a) + v
    return v.astype(np.float32).reshape(shape)


def weight_rule(name, shape):
    """(a, b) of a parameter: see the docstring."""
    if name.endswith(".bias"):
        return 0.0, 0.125
    if name.endswith(".gamma"):
        return 1.0, 0.25
    taps = shape[-1] * shape[-2] if len(shape) >= 4 else 1
    gain = 0.5 if name == "decoder.conv_out.weight" else 1.0
    return 0.0, float(np.float32(gain * math.sqrt(3.0 / (shape[1] * taps))))


def fill_weights(model, seed):
    """Every parameter drawn; returns the list for the metadata and the values' FNV-1a-64."""
    params = dict(model.named_parameters())
    if set(params) != set(model.state_dict()):
        raise RuntimeError("the VAE has buffers besides its parameters: they would not be drawn")
    table, h = [], 0xCBF29CE484222325
    with torch.no_grad():
        for name, p in params.items():
            shape = list(p.shape)
            a, b = weight_rule(name, shape)
            v = draw(seed, name, shape, a, b)
            p.copy_(torch.from_numpy(v))
            h = fnv1a64(v.astype("<f4").tobytes(), h)
            table.append([name, shape, a, b])
    return table, h


# ---------------------------------------------------------------- reference runs

TRACE_DECODE = ["post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.*", "decoder"]
TRACE_ENCODE = ["encoder.conv_in", "encoder.down_blocks.*", "encoder.mid_block", "encoder", "quant_conv"]


def hooked(vae, patterns, cap):
    """Forward hooks that keep [C, h, w] of the modules named by patterns (".*": children)."""
    modules = dict(vae.named_modules())
    hooks = []
    for pat in patterns:
        names = [pat] if not pat.endswith(".*") else [
            f"{pat[:-2]}.{k}" for k in range(len(modules[pat[:-2]]))]
        for name in names:
            def hook(_m, _args, out, name=name):
                if out.numel() <= TRACE_MAX:
                    cap[f"trace.{name}"] = out.detach()[0, :, 0].clone()
            hooks.append(modules[name].register_forward_hook(hook))
    return hooks


def run_case(vae, spec, io):
    cfg = vae.config
    sf = 2 ** len(cfg.temperal_downsample)
    g = torch.Generator().manual_seed(spec["seed"])
    lh, lw = spec["latent"]
    io["latents"] = torch.randn(1, cfg.z_dim, 1, lh, lw, generator=g)
    # QwenImagePipeline.__call__'s de-normalisation before vae.decode
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
    io["z"] = io["latents"] / inv_std + mean

    cap = {}
    hooks = hooked(vae, TRACE_DECODE, cap)
    with torch.no_grad():
        io["output"] = vae.decode(io["z"]).sample
    for h in hooks:
        h.remove()
    processor = VaeImageProcessor(vae_scale_factor=sf * 2)
    pil = processor.postprocess(io["output"][:, :, 0], output_type="pil")[0]
    io["rgb8"] = torch.from_numpy(np.array(pil).copy())
    if spec["rgb_float"]:
        io["rgb"] = torch.from_numpy(processor.postprocess(io["output"][:, :, 0], output_type="np")[0].copy())

    H, W = lh * sf, lw * sf
    if spec["encode_from_rgb8"]:
        rgb8 = torch.randint(0, 256, (H, W, 3), generator=g, dtype=torch.uint8)
        io["image_rgb8"] = rgb8
        plain = VaeImageProcessor(vae_scale_factor=sf * 2, do_resize=False)
        io["image"] = plain.preprocess(PIL.Image.fromarray(rgb8.numpy())).unsqueeze(2)
    else:
        io["image"] = torch.rand(1, 3, 1, H, W, generator=g) * 2 - 1
    hooks = hooked(vae, TRACE_ENCODE, cap)
    with torch.no_grad():
        io["mean"] = vae.encode(io["image"]).latent_dist.mean
    for h in hooks:
        h.remove()
    if spec["encode_from_rgb8"]:
        # QwenImageEditPipeline._encode_vae_image
        lmean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
        lstd = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
        io["image_latents"] = (io["mean"] - lmean) / lstd
    io.update(cap)

    if spec.get("odd"):
        oh, ow = spec["odd"]
        io["odd_image"] = torch.rand(1, 3, 1, oh, ow, generator=g) * 2 - 1
        with torch.no_grad():
            io["odd_mean"] = vae.encode(io["odd_image"]).latent_dist.mean

    th, tw = spec["tiled_latent"]
    tile, stride = spec["tiling"]
    io["tiled_z"] = torch.randn(1, cfg.z_dim, 1, th, tw, generator=g)
    vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                      tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    with torch.no_grad():
        io["tiled_output"] = vae.decode(io["tiled_z"]).sample
    vae.use_tiling = False
    return {"tiling": json.dumps([tile, stride])}


def run_pipeline_case(vae, spec, io, out):
    """sample_tiny's denoised latents (written by gen_qwen_image.py: run that first) through
    QwenImagePipeline's decode and postprocess, and an 8-bit image through the edit pipeline's
    encode: what diffusiond-generate -o and --image give."""
    cfg = vae.config
    sample = read_tensors(out / "sample_tiny" / "io.safetensors")
    io["denorm_latents"] = sample["denorm_latents"]
    with torch.no_grad():
        image = vae.decode(io["denorm_latents"]).sample
    processor = VaeImageProcessor(vae_scale_factor=16)
    io["pipeline_rgb8"] = torch.from_numpy(
        np.array(processor.postprocess(image[:, :, 0], output_type="pil")[0]).copy())
    g = torch.Generator().manual_seed(spec["seed"])
    rgb8 = torch.randint(0, 256, (24, 40, 3), generator=g, dtype=torch.uint8)
    io["image_rgb8"] = rgb8
    plain = VaeImageProcessor(vae_scale_factor=16, do_resize=False)
    pixels = plain.preprocess(PIL.Image.fromarray(rgb8.numpy())).unsqueeze(2)
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean
    lmean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
    lstd = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
    io["mean"] = mean
    io["image_latents"] = (mean - lmean) / lstd
    return {}


def read_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def gen_case(out, name, spec):
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "vae").mkdir(parents=True)
    torch.manual_seed(0)
    model = AutoencoderKLQwenImage(**spec["config"]).eval()
    table, digest = fill_weights(model, spec["seed"])
    io = {}
    with tempfile.TemporaryDirectory(prefix="gen-vae-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        shutil.copy(Path(tmp) / "config.json", folder / "vae" / "config.json")
        vae = AutoencoderKLQwenImage.from_pretrained(tmp).eval()  # from the file, as the C side
        meta = run_pipeline_case(vae, spec, io, out) if spec.get("pipeline") else run_case(vae, spec, io)
    output = io["output"] if "output" in io else io["pipeline_rgb8"].float() / 127.5 - 1
    clamped = (output.abs() == 1).float().mean().item()
    meta.update({"case": name, "versions": versions(), "weights": json.dumps(table, separators=(",", ":")),
                 "weights_seed": spec["seed"], "weights_fnv1a64": f"{digest:016x}"})
    tensors = {k: (v if v.dtype == torch.uint8 else v.float()) for k, v in io.items()}
    write_tensors(folder / "io.safetensors", tensors, meta)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{name}: output {list(output.shape)} ({clamped:.1%} clamped, std {output.std():.3f}), "
          f"mean {list(io['mean'].shape)}, {len([k for k in io if k.startswith('trace.')])} traces, {size / 1024:.0f} KiB")


def check(out):
    """Regenerates into a temporary folder and compares the committed files byte for byte."""
    bad = 0
    with tempfile.TemporaryDirectory(prefix="check-vae-") as tmp:
        shutil.copytree(out / "sample_tiny", Path(tmp) / "sample_tiny")
        for name, spec in CASES.items():
            gen_case(Path(tmp), name, spec)
            for rel in ("vae/config.json", "io.safetensors"):
                if not filecmp.cmp(out / name / rel, Path(tmp) / name / rel, shallow=False):
                    print(f"{name}/{rel}: differs from a fresh run")
                    bad += 1
    print("gen_vae --check:", "bit-exact" if not bad else f"{bad} files differ")
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden", help="output folder")
    ap.add_argument("--check", action="store_true", help="compare a fresh run with --out")
    args = ap.parse_args(argv)
    setup_determinism()
    for ctr, key, want in PHILOX_KAT:
        got = philox4x32_10(*[np.array([c], dtype=np.uint64) for c in ctr], *key)
        if tuple(int(x[0]) for x in got) != want:
            raise RuntimeError("philox4x32_10 does not give Random123's known answers")
    if args.check:
        return check(args.out)
    t0 = time.monotonic()
    for name, spec in CASES.items():
        gen_case(args.out, name, spec)
    print(f"gen_vae: wrote {args.out} in {time.monotonic() - t0:.1f} s ({versions()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
