"""diffusiond-generate with the VAE: -o writes the decoded image as a PNG with the reference
pipeline's pixels, --image encodes an input image into the edit pipeline's latents
(--dump-latents), and a missing VAE, a bad image or a bad combination of options gets a clear
error instead of a crash.

The model folder is tests/golden/sample_tiny's transformer and scheduler with the VAE of
tests/golden/vae_pipe (z_dim 16, spatial factor 8, the real latents mean/std). Its weights are
not committed: this test draws them from the recipe in vae_pipe/io.safetensors' metadata
(tools/golden/gen_vae.py: Philox4x32-10 per tensor name, the same values as the reference's) in
pure Python and writes the safetensors file itself, then checks their FNV-1a-64 against the
reference's."""
import json
import os
import struct
import subprocess
import zlib
from array import array

import pytest

from conftest import BUILD, REPO, SANITIZER_REPORT

GENERATE = os.path.join(BUILD, "diffusiond-generate")
SAMPLE = os.path.join(REPO, "tests/golden/sample_tiny")
SAMPLE_IO = os.path.join(SAMPLE, "io.safetensors")
VAE_GOLDEN = os.path.join(REPO, "tests/golden/vae_pipe")
VAE_IO = os.path.join(VAE_GOLDEN, "io.safetensors")


# ---- safetensors and PNG without libraries ---------------------------------------------------

def read_safetensors(path):
    """{name: (dtype, shape, raw bytes)} and the metadata of a .safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[begin:end])
    return out, meta


def floats(entry):
    values = array("f")
    values.frombytes(entry[2])
    return values


def write_safetensors(path, tensors):
    """tensors: [(name, shape, array('f'))], written in that order."""
    header, offset = {}, 0
    for name, shape, values in tensors:
        size = len(values) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, _, values in tensors:
            f.write(values.tobytes())


def png_read(path):
    """(width, height, RGB bytes) of an 8-bit RGB, non-interlaced PNG."""
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", None
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos:pos + 4])
        kind, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", raw[pos + 8 + length:pos + 12 + length])[0]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, color, interlace) == (8, 2, 0), "8-bit RGB, not interlaced"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    data, stride = zlib.decompress(idat), width * 3
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind, row = data[y * (stride + 1)], bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - 3] if i >= 3 else 0
            b = prev[i]
            c = prev[i - 3] if i >= 3 else 0
            if kind == 1:
                row[i] = (row[i] + a) & 255
            elif kind == 2:
                row[i] = (row[i] + b) & 255
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += row
        prev = row
    return width, height, bytes(out)


def png_write(path, width, height, rgb):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\0" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# ---- the VAE's weights, as tools/golden/gen_vae.py defines them -------------------------------

M32 = 0xFFFFFFFF


def philox(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def draw(seed, name, count, a, b):
    tag = 0x811C9DC5
    for byte in name.encode():
        tag = ((tag ^ byte) * 0x01000193) & M32
    b32, out = f32(b), array("f")
    for blk in range((count + 3) // 4):
        for word in philox((blk & M32, blk >> 32, tag, 0), (seed & M32, seed >> 32)):
            # u * b is exact in double (24 + 24 bits) and a + f32(u * b) too: one rounding
            # each, as float32 arithmetic
            v = f32(((word >> 8) - (1 << 23)) * 2.0 ** -23 * b32)
            out.append(f32(a + v) if a else v)
    del out[count:]
    return out


def fnv1a64(data, h=0xCBF29CE484222325):
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """sample_tiny's transformer and scheduler with vae_pipe's VAE, weights drawn here."""
    folder = tmp_path_factory.mktemp("vae-model")
    for part in ("transformer", "scheduler"):
        (folder / part).symlink_to(os.path.join(SAMPLE, part))
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").symlink_to(os.path.join(VAE_GOLDEN, "vae", "config.json"))
    _, meta = read_safetensors(VAE_IO)
    seed, tensors, h = int(meta["weights_seed"]), [], 0xCBF29CE484222325
    for name, shape, a, b in json.loads(meta["weights"]):
        count = 1
        for d in shape:
            count *= d
        values = draw(seed, name, count, a, b)
        h = fnv1a64(values.tobytes(), h)
        tensors.append((name, shape, values))
    assert f"{h:016x}" == meta["weights_fnv1a64"], "the drawn weights are not the reference's"
    write_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors", tensors)
    return str(folder)


def run(*args):
    r = subprocess.run([GENERATE, *args], capture_output=True, text=True, timeout=300)
    assert not SANITIZER_REPORT.search(r.stderr), r.stderr  # an error exit must be a clean one
    return r


def denoise_args(model, *extra):
    return ["--model", model, "--prompt-embeds", SAMPLE_IO, "--negative-embeds", SAMPLE_IO,
            "--steps", "4", "--true-cfg-scale", "4", "--width", "48", "--height", "32", "--quiet",
            *extra]


# ---- -o: the decoded image ---------------------------------------------------------------

def test_png_has_the_reference_pipelines_pixels(model, tmp_path):
    """QwenImagePipeline on the same latents decoded and postprocessed to the same bytes, but
    where our float rounding moves a value across a .5 step (a handful of bytes, one off)."""
    out = tmp_path / "out.png"
    r = run(*denoise_args(model, "--latents", SAMPLE_IO, "-o", str(out)))
    assert r.returncode == 0, r.stderr
    width, height, rgb = png_read(out)
    assert (width, height) == (48, 32)
    ref, _ = read_safetensors(VAE_IO)
    assert ref["pipeline_rgb8"][1] == [32, 48, 3]
    want = ref["pipeline_rgb8"][2]
    diffs = [abs(x - y) for x, y in zip(rgb, want)]
    assert max(diffs) <= 1
    assert sum(d != 0 for d in diffs) <= len(want) // 100
    assert len(set(rgb)) > 50  # an image, not a flat colour


def test_png_is_reproducible_and_follows_the_seed(model, tmp_path):
    images = []
    for i, seed in enumerate(["7", "7", "8"]):
        out = tmp_path / f"seed{i}.png"
        r = run(*denoise_args(model, "--seed", seed, "-o", str(out)))
        assert r.returncode == 0, r.stderr
        images.append(out.read_bytes())
    assert images[0] == images[1]
    assert images[0] != images[2]


def test_output_needs_the_vae_weights(tmp_path):
    """sample_tiny's vae/ has its config only: -o says which file is missing."""
    r = run(*denoise_args(SAMPLE, "--latents", SAMPLE_IO, "-o", str(tmp_path / "x.png")))
    assert r.returncode == 1
    assert r.stderr.startswith("diffusiond-generate: ") and "vae" in r.stderr
    assert not (tmp_path / "x.png").exists()


# ---- --image: an input image to latents ----------------------------------------------------

def test_image_to_the_edit_pipelines_latents(model, tmp_path):
    ref, _ = read_safetensors(VAE_IO)
    height, width, _ = ref["image_rgb8"][1]
    png = tmp_path / "in.png"
    png_write(png, width, height, ref["image_rgb8"][2])
    out = tmp_path / "latents.safetensors"
    r = run("--model", model, "--image", str(png), "--dump-latents", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    got, _ = read_safetensors(out)
    for name, golden in (("image_latents", "image_latents"), ("posterior_mean", "mean")):
        assert got[name][1] == ref[golden][1] == [1, 16, 1, 3, 5]
        a, b = floats(got[name]), floats(ref[golden])
        err = (sum((x - y) ** 2 for x, y in zip(a, b)) / sum(y * y for y in b)) ** 0.5
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize("content,message", [
    (None, "nope.png"),
    (b"not an image at all", "in.png"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "in.png"),  # truncated
])
def test_a_bad_image_is_named(model, tmp_path, content, message):
    path = tmp_path / ("nope.png" if content is None else "in.png")
    if content is not None:
        path.write_bytes(content)
    r = run("--model", model, "--image", str(path), "--dump-latents", str(tmp_path / "l.st"), "--quiet")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("diffusiond-generate: ") and message in r.stderr
    assert not (tmp_path / "l.st").exists()


def test_an_image_too_small_to_encode(model, tmp_path):
    png = tmp_path / "tiny.png"
    png_write(png, 1, 1, b"\x10\x20\x30")
    r = run("--model", model, "--image", str(png), "--dump-latents", str(tmp_path / "l.st"), "--quiet")
    assert r.returncode == 1
    assert "cannot be encoded" in r.stderr


BAD = [
    (["--image", "x.png"], "--image needs --dump-latents"),
    (["--dump-latents", "x.st"], "--dump-latents needs --image"),
    (["--image", "x.png", "--dump-latents", "x.st", "-o", "y.png"], "--image and -o exclude each other"),
    (["--image", "x.png", "--dump-latents", "x.st", "--prompt", "p"], "--image takes no prompt"),
    (["-o"], "requires an argument"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_combinations(extra, message):
    r = run("--model", SAMPLE, *extra)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr
