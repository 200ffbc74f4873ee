"""The transformer forward, diffusiond against the reference, on the same machine, config and
thread count, in one run.

Makes a mid-size Qwen-Image transformer with seeded random weights (D = 1024: 8 heads of 128,
4 layers, text width 3584) in a temporary diffusers folder, times diffusers' forward on 1024
image tokens (a 512x512 image) and 64 text tokens with torch, then build/bench/bench_dit on the
same folder and inputs of the same shapes, and prints both medians and their ratio.

    python tools/bench/bench_dit.py BUILD [--threads N] [--runs N]

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
from diffusers import QwenImageTransformer2DModel

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--layers", type=int, default=4)
args = ap.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = QwenImageTransformer2DModel(
    patch_size=2, in_channels=64, out_channels=16, num_layers=args.layers,
    attention_head_dim=128, num_attention_heads=8, joint_attention_dim=3584,
    axes_dims_rope=(16, 56, 56),
).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.02)

S_SIDE, L = 32, 64
img = torch.randn(1, S_SIDE * S_SIDE, 64)
txt = torch.randn(1, L, 3584)
mask = torch.ones(1, L)
t = torch.tensor([0.5])

def forward():
    with torch.no_grad():
        return model(hidden_states=img, encoder_hidden_states=txt,
                     encoder_hidden_states_mask=mask, timestep=t,
                     img_shapes=[[(1, S_SIDE, S_SIDE)]], return_dict=False)[0]

forward()  # warm-up: first-call allocations and kernel selection

# Rounds alternate between the two so that the machine's drift (a shared VM's neighbours,
# clock changes) falls on both; each round times one reference forward and one of ours.
ref_ms, ours_ms = [], []
with tempfile.TemporaryDirectory(prefix="diffusiond-bench-dit-") as d:
    model.save_pretrained(d, safe_serialization=True)
    report = ""
    for _ in range(args.runs):
        a = time.perf_counter()
        forward()
        ref_ms.append((time.perf_counter() - a) * 1e3)
        out = subprocess.run([os.path.join(args.build, "bench", "bench_dit"), d,
                              "--img-tokens", str(S_SIDE * S_SIDE), "--txt-tokens", str(L),
                              "--threads", str(args.threads), "--runs", "2"],
                             capture_output=True, text=True,
                             env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        if out.returncode != 0:
            sys.exit(f"bench_dit failed: {out.stderr}")
        report = out.stdout
        ours_ms.append(float(re.search(r"dit_forward_ms ([0-9.]+)", out.stdout).group(1)))
    print(report, end="")
ref, ours = statistics.median(ref_ms), statistics.median(ours_ms)
print(f"reference (diffusers {__import__('diffusers').__version__}, torch {torch.__version__}, "
      f"{args.threads} threads): {ref:.1f} ms; diffusiond: {ours:.1f} ms "
      f"(medians of {args.runs} alternating rounds); ratio {ours / ref:.2f}x (target <= 0.80x)")
