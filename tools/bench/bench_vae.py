"""The Qwen-Image VAE, diffusiond against the reference, on the same machine, config and thread
count, in one run.

Makes a VAE with the real widths (base_dim 96, dim_mult 1,2,4,4, two residual blocks, z_dim
16) and seeded random weights in a temporary diffusers folder, times diffusers'
AutoencoderKLQwenImage decode of 32x32 latents (a 256x256 image) and encode of a 256x256 image
with torch, then build/bench/bench_vae on the same folder and sizes, in alternating rounds, and
prints both medians, their ratio and the peak resident memory of each side's decode and encode
(everything resident during the call, weights and runtime included). Then the peak of a
1024x1024 decode on diffusiond's side alone (the reference would need minutes and ~10 GiB).

    python tools/bench/bench_vae.py BUILD [--threads N] [--runs N] [--size 256] [--no-1024]

Needs the reference libraries (tools/golden/requirements.txt) in the Python that runs it.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import diffusers
from diffusers import AutoencoderKLQwenImage

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--no-1024", action="store_true", help="skip the 1024x1024 decode")
args = ap.parse_args()

diffusers.utils.logging.set_verbosity_error()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = AutoencoderKLQwenImage().eval()  # the defaults are the real config
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            p.uniform_(0.75, 1.25)
        elif name.endswith(".bias"):
            p.normal_(0.0, 0.02)
        else:
            p.normal_(0.0, (1.0 / p[0].numel()) ** 0.5)

side = args.size
g = torch.Generator().manual_seed(1)
z = torch.randn(1, 16, 1, side // 8, side // 8, generator=g) * 2
image = torch.rand(1, 3, 1, side, side, generator=g) * 2 - 1


def peak_reset():
    """Starts VmHWM over from the current resident set (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def decode():
    with torch.no_grad():
        return model.decode(z).sample


def encode():
    with torch.no_grad():
        return model.encode(image).latent_dist.mean


decode()  # warm-up: first-call allocations and kernel selection, as ours gets
encode()

ref_dec, ref_enc, ours_dec, ours_enc = [], [], [], []
ref_dec_peak = ref_enc_peak = 0.0
with tempfile.TemporaryDirectory(prefix="diffusiond-bench-vae-") as d:
    model.save_pretrained(d, safe_serialization=True)
    report = ""
    for _ in range(args.runs):  # alternating rounds: the machine's drift falls on both
        peak_reset()
        a = time.perf_counter()
        decode()
        ref_dec.append((time.perf_counter() - a) * 1e3)
        ref_dec_peak = max(ref_dec_peak, peak_mib())
        peak_reset()
        a = time.perf_counter()
        encode()
        ref_enc.append((time.perf_counter() - a) * 1e3)
        ref_enc_peak = max(ref_enc_peak, peak_mib())
        out = subprocess.run([os.path.join(args.build, "bench", "bench_vae"), d, "--size", str(side),
                              "--threads", str(args.threads), "--runs", "2"],
                             capture_output=True, text=True,
                             env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        if out.returncode != 0:
            sys.exit(f"bench_vae failed: {out.stderr}")
        report = out.stdout
        ours_dec.append(float(re.search(r"vae_decode_ms ([0-9.]+)", report).group(1)))
        ours_enc.append(float(re.search(r"vae_encode_ms ([0-9.]+)", report).group(1)))
    print("".join(line + "\n" for line in report.splitlines() if not line.startswith("vae_")), end="")
    ours_dec_peak = float(re.search(r"vae_decode_peak_mib ([0-9.]+)", report).group(1))
    ours_enc_peak = float(re.search(r"vae_encode_peak_mib ([0-9.]+)", report).group(1))
    ref = f"diffusers {diffusers.__version__}, torch {torch.__version__}, {args.threads} threads"
    for what, r, o, rp, op in (("decode", ref_dec, ours_dec, ref_dec_peak, ours_dec_peak),
                               ("encode", ref_enc, ours_enc, ref_enc_peak, ours_enc_peak)):
        rm, om = statistics.median(r), statistics.median(o)
        print(f"{what} {side}x{side}: reference ({ref}): {rm:.0f} ms, peak RSS {rp:.0f} MiB; "
              f"diffusiond: {om:.0f} ms, peak RSS {op:.0f} MiB (medians of {args.runs} alternating "
              f"rounds); ratio {om / rm:.2f}x (target <= 0.80x)")
    if not args.no_1024:
        out = subprocess.run([os.path.join(args.build, "bench", "bench_vae"), d, "--size", "1024",
                              "--threads", str(args.threads), "--runs", "0", "--decode-only"],
                             capture_output=True, text=True,
                             env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        if out.returncode != 0:
            sys.exit(f"bench_vae failed: {out.stderr}")
        ms = float(re.search(r"vae_decode_ms ([0-9.]+)", out.stdout).group(1))
        peak = float(re.search(r"vae_decode_peak_mib ([0-9.]+)", out.stdout).group(1))
        print(f"decode 1024x1024 (diffusiond, decoder only, one cold call): {ms / 1e3:.1f} s, "
              f"peak RSS {peak:.0f} MiB = {peak / 1024:.2f} GiB (target < 3 GiB)")
