"""Encoding speed, diffusiond's Qwen2 tokenizer against Hugging Face tokenizers (Rust), on the
same texts (tests/golden/tokenizer/corpus.json), the same vocabulary and the same machine, one
thread each, in one run.

The reference encodes one text per call with Tokenizer.encode (not encode_batch, which would
spread a batch over threads), with RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false.
build/bench/bench_tokenizer times ours. Both count the same tokens (checked). The runs
alternate, ours then the reference's, three times, so that the machine's drift falls on both;
each side's figure is its median round.

    python tools/bench/bench_tokenizer.py BUILD [--tokenizer DIR] [--rounds N]

Needs tokenizers (tools/golden/requirements.txt) in the Python that runs it.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

# Before the import: the Rust side reads them when its thread pool starts.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REAL = os.path.join(os.path.dirname(REPO), "shared", "data", "qwen2-tokenizer")
SMALL = os.path.join(REPO, "tests", "fixtures", "qwen2-tokenizer-small")

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--tokenizer", default=REAL if os.path.isfile(os.path.join(REAL, "vocab.json"))
                else SMALL)
ap.add_argument("--rounds", type=int, default=9)
args = ap.parse_args()

with open(os.path.join(REPO, "tests", "golden", "tokenizer", "corpus.json"), encoding="utf-8") as f:
    texts = [c["text"] for c in json.load(f)["cases"]]
tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
ref_tokens = sum(len(tok.encode(t).ids) for t in texts)  # also the warm-up


def reference_rounds():
    secs = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for t in texts:
            tok.encode(t)
        secs.append(time.perf_counter() - t0)
    return secs


def ours():
    r = subprocess.run([os.path.join(args.build, "bench", "bench_tokenizer"), args.tokenizer,
                        str(args.rounds)], capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"bench_tokenizer failed: {r.stderr}")
    tokens = int(re.search(r"(\d+) tokens per round", r.stdout).group(1))
    rate = float(re.search(r"tokens/s: (\d+)", r.stdout).group(1))
    return tokens, rate, r.stdout


ours_rates, ref_secs = [], []
for _ in range(3):
    tokens, rate, text = ours()
    ours_rates.append(rate)
    ref_secs += reference_rounds()
if tokens != ref_tokens:
    sys.exit(f"the two count different tokens: ours {tokens}, reference {ref_tokens}")
ours_rate = statistics.median(ours_rates)
ref_rate = ref_tokens / statistics.median(ref_secs)
print(text.splitlines()[0])
print(f"diffusiond:          {ours_rate:12.0f} tokens/s")
print(f"HF tokenizers {__import__('tokenizers').__version__}: {ref_rate:12.0f} tokens/s "
      f"(Tokenizer.encode per text, 1 thread)")
print(f"ratio: {ours_rate / ref_rate:.2f}x the reference's speed")
