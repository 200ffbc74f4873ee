#!/usr/bin/env python3
"""Proves that the committed golden vectors reproduce: reloads every case from its folder (weights
with from_pretrained, configs, inputs and call arguments from io.safetensors), runs the reference
again with gen_qwen_image.py's functions, and compares every saved output bit for bit.

    python tools/golden/check_golden.py [--dir DIR]        (default: tests/golden of this repo)

Exit status 0 when every tensor matches, 1 otherwise. Bit-exact reproduction holds with the
pinned versions on the kind of CPU that generated the vectors; another CPU may differ in the
last bits (its BLAS kernels sum in another order), which is reported as the largest difference.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_qwen_image as gen  # noqa: E402  (sets the attention backend before diffusers loads)


def compare(case, saved, fresh):
    """Compares every tensor that the run produced with the saved one; returns the failures."""
    bad = []
    for name, value in sorted(fresh.items()):
        if name not in saved:
            bad.append(f"{case}: {name} missing from io.safetensors")
        elif not gen.same_bits(saved[name], value):
            a, b = saved[name], value
            if a.shape != b.shape or a.dtype != b.dtype:
                bad.append(f"{case}: {name} is {a.dtype}{tuple(a.shape)}, run gives {b.dtype}{tuple(b.shape)}")
            else:
                diff = (a.double() - b.double()).abs().nan_to_num(nan=float("inf")).max().item()
                bad.append(f"{case}: {name} differs, max |diff| {diff:.3g}")
    return bad


def check(root):
    failures, counted = [], 0
    for case in gen.DIT_CASES:
        io, meta = gen.read_tensors(root / case / "io.safetensors")
        fresh = gen.run_dit(gen.load_dit(root / case), io, json.loads(meta["call"]))
        failures += compare(case, io, fresh)
        counted += len(fresh)
        print(f"check_golden: {case}: {len(fresh)} outputs compared")

    io, meta = gen.read_tensors(root / "scheduler" / "sigmas.safetensors")
    fresh = gen.run_schedules(root / "scheduler", io)
    failures += compare("scheduler", io, fresh)
    counted += len(fresh)
    print(f"check_golden: scheduler: {len(fresh)} outputs compared")

    io, meta = gen.read_tensors(root / "sample_tiny" / "io.safetensors")
    fresh = gen.run_sample(root / "sample_tiny", io, json.loads(meta["call"]))
    failures += compare("sample_tiny", io, fresh)
    counted += len(fresh)
    print(f"check_golden: sample_tiny: {len(fresh)} outputs compared")
    return counted, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=gen.REPO / "tests" / "golden", help="golden folder")
    args = ap.parse_args(argv)
    gen.setup_determinism()
    counted, failures = check(args.dir)
    for f in failures:
        print("check_golden: FAIL", f)
    print(f"check_golden: {counted - len(failures)} of {counted} tensors bit-exact ({gen.versions()})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
