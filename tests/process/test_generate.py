"""diffusiond-generate, the one-process pipeline: the denoising loop on the golden tiny model
gives the reference's latents, from prompt embeddings or from prompt strings through the
tokenizer and text encoder; a seed gives the same latents every run, and every bad argument
gets a clear error (exit 2) instead of a crash."""
import json
import os
import struct
import subprocess
from array import array

import pytest

from conftest import BUILD, REPO

GENERATE = os.path.join(BUILD, "diffusiond-generate")
MODEL = os.path.join(REPO, "tests/golden/sample_tiny")
IO = os.path.join(MODEL, "io.safetensors")


def read_safetensors(path):
    """{name: (shape, values)} of the f32 tensors of a .safetensors file (the format is an
    8-byte header length, a JSON header and the raw data; no library needed)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        begin, end = info["data_offsets"]
        values = array("f")
        values.frombytes(data[begin:end])
        out[name] = (info["shape"], values)
    return out


def rel_err(a, b):
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(y * y for y in b)
    return (num / den) ** 0.5


def run(*args):
    return subprocess.run([GENERATE, *args], capture_output=True, text=True, timeout=120)


def base_args(tmp_path, *extra):
    return ["--model", MODEL, "--prompt-embeds", IO, "--negative-embeds", IO,
            "--steps", "4", "--true-cfg-scale", "4", "--width", "48", "--height", "32",
            "--quiet", *extra]


def test_denoising_matches_the_reference(tmp_path):
    out = tmp_path / "out.safetensors"
    r = run(*base_args(tmp_path, "--latents", IO, "--dump", str(out)))
    assert r.returncode == 0, r.stderr
    got, ref = read_safetensors(out), read_safetensors(IO)
    assert got["latents"][0] == [1, 6, 64]
    assert rel_err(got["latents"][1], ref["final_latents"][1]) < 1e-4
    assert got["latents_denormalized"][0] == [1, 16, 1, 4, 6]
    assert rel_err(got["latents_denormalized"][1], ref["denorm_latents"][1]) < 1e-4


def test_seed_is_reproducible_and_matters(tmp_path):
    dumps = []
    for i, seed in enumerate(["7", "7", "8"]):
        out = tmp_path / f"seed{i}.safetensors"
        r = run(*base_args(tmp_path, "--seed", seed, "--dump", str(out)))
        assert r.returncode == 0, r.stderr
        dumps.append(read_safetensors(out)["latents"][1].tobytes())
    assert dumps[0] == dumps[1]
    assert dumps[0] != dumps[2]


BAD = [
    ([], "--model and one of --prompt and --prompt-embeds are required"),
    (["--model", MODEL], "--model and one of --prompt and --prompt-embeds are required"),
    (["--prompt", "x"], "--model and one of --prompt and --prompt-embeds are required"),
    (["--negative-prompt", "x", "--negative-embeds", IO], "exclude each other"),
    (["--steps", "0"], "--steps wants a whole number in 1..1000"),
    (["--steps", "abc"], "--steps wants a whole number"),
    (["--steps", "99999999999999999999"], "--steps wants a whole number"),
    (["--width", "50"], "multiples of 16"),
    (["--height", "-32"], "--height wants a whole number"),
    (["--seed", "-1"], "--seed wants a whole number"),
    (["--true-cfg-scale", "nan"], "--true-cfg-scale wants a number"),
    (["--true-cfg-scale", "1e9"], "--true-cfg-scale wants a number"),
    (["--threads", "x"], "--threads wants a whole number"),
    (["--latents", IO, "--seed", "1"], "exclude each other"),
    (["--bogus"], "unrecognized option"),
    (["--max-sequence-length", "2000"], "--max-sequence-length wants a whole number in 1..1024"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) or "none" for b in BAD])
def test_bad_arguments(tmp_path, extra, message):
    args = extra if not extra or extra[0] == "--model" else ["--model", MODEL, "--prompt-embeds", IO, *extra]
    r = run(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr


@pytest.mark.parametrize("what", ["model", "prompt", "latents"])
def test_missing_or_wrong_files_are_named(tmp_path, what):
    bogus = tmp_path / "nope.safetensors"
    args = base_args(tmp_path, "--latents", IO)
    if what == "model":
        args[args.index("--model") + 1] = str(tmp_path)
    elif what == "prompt":
        args[args.index("--prompt-embeds") + 1] = str(bogus)
    else:
        args[args.index("--latents") + 1] = os.path.join(MODEL, "transformer",
                                                         "diffusion_pytorch_model.safetensors")
    r = run(*args)
    assert r.returncode == 1
    assert r.stderr.startswith("diffusiond-generate: ")
    if what == "prompt":
        assert "nope.safetensors" in r.stderr
    if what == "latents":
        assert "latents" in r.stderr


def test_a_model_of_another_geometry_is_refused(tmp_path):
    """dit_tiny's transformer takes 16 channels, not 2x2 patches of 16: a clear error."""
    r = run("--model", os.path.join(REPO, "tests/golden/dit_tiny"), "--prompt-embeds", IO,
            "--quiet")
    assert r.returncode == 1
    assert "in_channels 16" in r.stderr and "a Qwen-Image text-to-image model has 2, 64 and 16" in r.stderr


def test_prompts_are_cut_to_max_sequence_length(tmp_path):
    dumps = []
    for n in ["512", "3"]:
        out = tmp_path / f"len{n}.safetensors"
        r = run(*base_args(tmp_path, "--latents", IO, "--max-sequence-length", n, "--dump", str(out)))
        assert r.returncode == 0, r.stderr
        dumps.append(read_safetensors(out)["latents"][1])
    ref = read_safetensors(IO)["final_latents"][1]
    assert rel_err(dumps[0], ref) < 1e-4   # 6 tokens fit in 512: the reference's result
    assert rel_err(dumps[1], ref) > 1e-3   # cut to 3 tokens: another result


# The whole pipeline from prompt strings: tools/golden/gen_text_encoder.py ran
# QwenImagePipeline on sample_tiny's transformer and scheduler with text_tiny's tokenizer and
# text encoder; the same folder is assembled here from links.
PIPELINE_IO = os.path.join(REPO, "tests/golden/pipeline_tiny/io.safetensors")


def pipeline_folder(tmp_path, text_encoder=True):
    folder = tmp_path / "model"
    folder.mkdir()
    for part in ("transformer", "scheduler", "vae"):
        (folder / part).symlink_to(os.path.join(MODEL, part))
    for part in ("tokenizer", "text_encoder") if text_encoder else ("tokenizer",):
        (folder / part).symlink_to(os.path.join(REPO, "tests/golden/text_tiny", part))
    return str(folder)


def test_prompts_through_the_text_encoder_match_the_reference(tmp_path):
    out = tmp_path / "out.safetensors"
    model = pipeline_folder(tmp_path)
    r = run("--model", model, "--prompt", "dance monkey",
            "--negative-prompt", "blurry, low quality", "--steps", "3", "--true-cfg-scale", "4",
            "--width", "48", "--height", "32", "--latents", PIPELINE_IO, "--dump", str(out),
            "--quiet")
    assert r.returncode == 0, r.stderr
    got, ref = read_safetensors(out), read_safetensors(PIPELINE_IO)
    assert got["latents"][0] == ref["final_latents"][0] == [1, 6, 64]
    assert rel_err(got["latents"][1], ref["final_latents"][1]) < 1e-4
    # another negative prompt (the empty one counts as given): another result
    out2 = tmp_path / "out2.safetensors"
    r = run("--model", model, "--prompt", "dance monkey", "--negative-prompt", "", "--steps", "3",
            "--width", "48", "--height", "32", "--latents", PIPELINE_IO, "--dump", str(out2), "--quiet")
    assert r.returncode == 0, r.stderr
    empty_negative = read_safetensors(out2)["latents"][1]
    assert rel_err(empty_negative, ref["final_latents"][1]) > 1e-3
    # and it differs from no negative prompt at all (CFG off): "" is a negative prompt
    out3 = tmp_path / "out3.safetensors"
    r = run("--model", model, "--prompt", "dance monkey", "--steps", "3", "--true-cfg-scale", "4",
            "--width", "48", "--height", "32", "--latents", PIPELINE_IO, "--dump", str(out3), "--quiet")
    assert r.returncode == 0, r.stderr
    assert rel_err(empty_negative, read_safetensors(out3)["latents"][1]) > 1e-3


@pytest.mark.parametrize("prompt,message", [
    ("bad \udcff byte", "--prompt: "),
])
def test_a_prompt_that_is_not_utf8_is_refused(tmp_path, prompt, message):
    r = subprocess.run([GENERATE, "--model", pipeline_folder(tmp_path), "--prompt",
                        os.fsencode(prompt), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert message in r.stderr and "UTF-8" in r.stderr


def test_a_missing_text_encoder_is_named(tmp_path):
    r = run("--model", pipeline_folder(tmp_path, text_encoder=False), "--prompt", "x", "--quiet")
    assert r.returncode == 1
    assert "text_encoder" in r.stderr
