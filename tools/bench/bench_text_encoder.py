"""The text encoder forward, diffusiond against the reference, on the same machine, config and
thread count, in one run.

Makes a mid-size Qwen2.5-VL text model with seeded random weights (hidden 1024: 8 heads of 128
with 2 kv heads, MLP 5504, 6 layers, vocabulary 8192; the real one is 3584 wide, 28 layers) in
a temporary folder, times transformers' text model on a 256-token prompt with torch, then
build/bench/bench_text_encoder on the same folder and token count, and prints both medians and
their ratio.

    python tools/bench/bench_text_encoder.py BUILD [--threads N] [--runs N] [--tokens N]

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
import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--tokens", type=int, default=256)
ap.add_argument("--layers", type=int, default=6)
args = ap.parse_args()

transformers.utils.logging.set_verbosity_error()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
config = Qwen2_5_VLConfig(
    text_config=dict(hidden_size=1024, intermediate_size=5504, num_hidden_layers=args.layers,
                     num_attention_heads=8, num_key_value_heads=2, vocab_size=8192,
                     rope_scaling=dict(mrope_section=[16, 24, 24], rope_type="default", type="default"),
                     rope_theta=1000000.0, bos_token_id=0, eos_token_id=1),
    vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=1024),
    hidden_size=1024, vocab_size=8192, tie_word_embeddings=True)
model = Qwen2_5_VLForConditionalGeneration(config).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.02)
text_model = model.model.language_model

g = torch.Generator().manual_seed(1)
ids = torch.randint(0, 8192, (1, args.tokens), generator=g)
mask = torch.ones_like(ids)

def forward():
    with torch.no_grad():
        return text_model(input_ids=ids, attention_mask=mask).last_hidden_state

forward()  # warm-up

ref_ms, ours_ms = [], []
with tempfile.TemporaryDirectory(prefix="diffusiond-bench-text-") as d:
    model.save_pretrained(d, safe_serialization=True)
    report = ""
    for _ in range(args.runs):  # alternating rounds: the machine's drift falls on both
        a = time.perf_counter()
        forward()
        ref_ms.append((time.perf_counter() - a) * 1e3)
        out = subprocess.run([os.path.join(args.build, "bench", "bench_text_encoder"), d,
                              "--tokens", str(args.tokens), "--threads", str(args.threads),
                              "--runs", "2"],
                             capture_output=True, text=True,
                             env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        if out.returncode != 0:
            sys.exit(f"bench_text_encoder failed: {out.stderr}")
        report = out.stdout
        ours_ms.append(float(re.search(r"text_forward_ms ([0-9.]+)", out.stdout).group(1)))
    print(report, end="")
ref, ours = statistics.median(ref_ms), statistics.median(ours_ms)
print(f"reference (transformers {transformers.__version__}, torch {torch.__version__}, "
      f"{args.threads} threads, sdpa): {ref:.1f} ms; diffusiond: {ours:.1f} ms "
      f"(medians of {args.runs} alternating rounds); ratio {ours / ref:.2f}x (target <= 0.80x)")
