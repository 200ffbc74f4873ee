#!/usr/bin/env python3
"""Derives the small Qwen2 tokenizer fixture that the default tests carry.

The real vocabulary (151,643 tokens, 11 MB of tokenizer.json) is not something every checkout
should hold, and a text encoder whose embedding has 152,064 rows makes a golden model of
megabytes. This keeps the same algorithm and files with fewer merges:

  - the 256 byte-level symbols (ids 0-255, as in the real vocabulary);
  - the first BASE_MERGES merges by rank, plus every merge that the real tokenizer applies to
    KEEP_TEXTS (the pipeline's prompt template among them), so those texts tokenize to the same
    pieces as with the real vocabulary and the pipeline's drop of the first 34 tokens still cuts
    the template where it should;
  - the added tokens of the source folder's tokenizer_config.json, numbered after the
    vocabulary: with ../shared/data/qwen2-tokenizer that is 26, the 22 of Qwen2.5-VL
    (<|endoftext|> ... <|file_sep|>) and 4 of Qwen3 (<tool_response>, </tool_response>,
    <think>, </think>) that a real Qwen-Image folder does not have.

Ids are renumbered densely in rank order. The output folder has what a Qwen-Image folder's
tokenizer/ has (vocab.json, merges.txt, tokenizer_config.json) and tokenizer.json.

usage: make_small_tokenizer.py REAL_TOKENIZER_DIR OUT_DIR
"""
import json
import os
import sys

from tokenizers import Tokenizer

BASE_MERGES = 2000

TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
            "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
KEEP_TEXTS = [
    TEMPLATE.format(""),
    "dance monkey",
    "A cat sitting on a windowsill, watching the rain.",
    "a red bicycle leaning against a brick wall",
]


def bpe_merges_used(word, ranks):
    """The merges (pairs) that byte-level BPE applies to one pre-token, lowest rank first."""
    parts = list(word)
    used = []
    while len(parts) > 1:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get((parts[i], parts[i + 1]))
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        pair = (parts[best[1]], parts[best[1] + 1])
        used.append(pair)
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return used


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    real = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in tj["model"]["merges"]]
    ranks = {m: r for r, m in enumerate(merges)}
    by_id = {i: t for t, i in vocab.items()}

    keep = set(range(BASE_MERGES))
    for text in KEEP_TEXTS:
        for chunk in text.replace("<|im_start|>", "\0").replace("<|im_end|>", "\0").split("\0"):
            normalized = real.normalizer.normalize_str(chunk)
            for piece, _ in real.pre_tokenizer.pre_tokenize_str(normalized):
                keep.update(ranks[p] for p in bpe_merges_used(piece, ranks))

    new_vocab = {by_id[i]: i for i in range(256)}
    new_merges = []
    for r in sorted(keep):
        a, b = merges[r]
        if a not in new_vocab or b not in new_vocab:
            sys.exit(f"merge {r} ({a!r} {b!r}) uses a token outside the kept set")
        new_merges.append((a, b))
        if a + b not in new_vocab:
            new_vocab[a + b] = len(new_vocab)

    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    added_old = sorted(config["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))
    added = {}
    for n, (_, entry) in enumerate(added_old):
        added[str(len(new_vocab) + n)] = entry

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(new_vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in new_merges:
            f.write(f"{a} {b}\n")
    config = {k: v for k, v in config.items() if k != "chat_template"}
    config["added_tokens_decoder"] = added
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")

    tj["model"]["vocab"] = new_vocab
    tj["model"]["merges"] = [list(m) for m in new_merges]
    tj["added_tokens"] = [dict(id=int(i), **{k: v for k, v in e.items()}) for i, e in added.items()]
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)

    small = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    for text in KEEP_TEXTS:
        a = [by_id.get(i) or i for i in real.encode(text).ids]
        inv = {i: t for t, i in new_vocab.items()}
        b = [inv.get(i) or i for i in small.encode(text).ids]
        if len(a) != len(b):
            sys.exit(f"the small tokenizer splits {text!r} differently")
    print(f"{out}: {len(new_vocab)} tokens, {len(new_merges)} merges, {len(added)} added tokens")


if __name__ == "__main__":
    main()
