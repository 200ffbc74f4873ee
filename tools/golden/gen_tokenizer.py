#!/usr/bin/env python3
"""Expected token ids for the C tokenizer (text/tokenizer.c), from the reference: Hugging Face
tokenizers 0.23.3 (and transformers 5.24.0, which must agree with it).

    gen_tokenizer.py [--out DIR] [--real DIR]
        Writes DIR (default tests/golden/tokenizer/):
          corpus.json  the texts: name, text, and "normalized" where the reference's decode of
                       its ids differs from the text (NFC composed something)
          small.json   ids of every text with tests/fixtures/qwen2-tokenizer-small
          qwen2.json   the same with the real vocabulary (--real, default
                       ../shared/data/qwen2-tokenizer beside the repository; skipped with a
                       line when it is not there)
          flags.json   the small vocabulary with added tokens that use lstrip, rstrip and
                       normalized (Qwen's set none of them): the tokenizer_config.json and the
                       tokenizer.json added_tokens that the C test writes next to a copy of
                       the fixture's vocab.json and merges.txt, texts and their ids
        Each ids file also has decode cases (ids -> text, with and without the special tokens),
        a few token -> id lookups and the vocabulary size.
        Before writing, every text is checked to give the same ids through
        tokenizers.Tokenizer (tokenizer.json) and through transformers' Qwen2Tokenizer on a
        copy of the folder without tokenizer.json (vocab.json, merges.txt,
        tokenizer_config.json): the two ways the C side loads.

    gen_tokenizer.py --sweep BUILD [--tokenizer DIR]
        Compares BUILD/diffusiond-tokenize with the reference on probe strings around every
        code point (letters, digits, spaces, contractions, combining classes, compositions):
        the check that the C side's Unicode corrections still match the reference. About
        three minutes. Exit 1 and the first differences if any.

Run from the repository root with a Python that has tools/golden/requirements.txt installed
(plus tokenizers==0.23.3). Deterministic: the same files every run.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata

import tokenizers
from tokenizers import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = "tests/fixtures/qwen2-tokenizer-small"
REAL = os.path.join(os.path.dirname(REPO), "shared", "data", "qwen2-tokenizer")
REAL_NAME = "../shared/data/qwen2-tokenizer"  # as the C test finds it from the repository root

TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
            "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")


def long_texts(rng):
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4000))
    return [
        ("long_word_repeated", "supercalifragilistic" * 150),
        ("long_word_random", letters),
        ("long_word_ab", "ab" * 2000),
        ("long_number", "".join(rng.choice("0123456789") for _ in range(2000))),
        ("long_spaces", " " * 3000 + "x" + " " * 3000),
        ("long_newlines", "\n" * 1000 + "a" + "\r\n" * 500),
        ("long_chinese", "".join(chr(rng.randrange(0x4E00, 0x9FA6)) for _ in range(1500))),
        ("long_punctuation", "!?.,;:" * 500),
        ("long_emoji", "😀👍🏽🎉" * 300),
        ("long_accented", "e\u0301" * 1000),
        ("long_url", "https://example.com/" + "a/b-c_d.e?f=g&" * 150),
    ]


# Characters around which the two Unicode engines disagreed before the C side corrected for
# it (see text/tokenizer_unicode.c and text/tokenizer_split.c), and other rare cases.
UNICODE_EDGES = [
    ("new_letter_cjk_ext_h", "a\U00031350b \U00031350\U00031351"),
    ("new_letter_garay", "x\U00010D4Ay \U00010D40\U00010D41"),
    ("new_digits_kawi", "a\U00011F50\U00011F51b"),
    ("mongolian_vowel_separator", "a\u180eb a \u180e b \u180e\u180e"),
    ("inert_marks", "x\u0301\u1df9 x\u1dfa\u0316 a\u0898\u0301 \u0d3b\u0d3c"),
    ("dives_akuru", "\U00011935\U00011930 \U00011938"),
    ("nko_dantayalan", "\u07ca\u07fd\u0301"),
    ("spaces_unicode", "a\u0085b\u00a0c\u3000d\u200be\u2028f\u2029g\u202fh\u205fi\u1680j\ufeffk"),
    ("space_runs_unicode", "a \u00a0\u00a0 b\u3000\u3000\n\u2003x"),
    ("long_s_kelvin", "'\u017f '\u017fx it'\u017f \u212a '\u212a \u212b"),
    ("noncharacters", "\uffff\ufffe\U0010ffff\ue000\U000f0000"),
    ("controls", "a\x00b\x01\x02\x7f\x1b[31mred\x1b[0m\x0b\x0c"),
    ("combining_first", "\u0301abc \u0301\u0301"),
    ("hangul_jamo", "\u1100\u1161\u11a8 \u1100\u1161 \uac00\u11a8"),
    ("singletons", "\u212b\u2126\u037e\u0387\u1fef\u2000"),
]


def corpus():
    rng = random.Random(20240611)
    texts = [
        ("empty", ""),
        ("english", "The quick brown fox jumps over the lazy dog."),
        ("english_prompt", "A cat sitting on a windowsill, watching the rain."),
        ("contractions", "I'm sure you're right: he's here, we've won, they'll come, I'd go, "
                         "don't, can't, it's"),
        ("contractions_upper", "I'M SURE YOU'RE RIGHT: HE'S HERE, WE'VE WON, THEY'LL COME, "
                               "I'D GO 'S 'LL 'RE 'Ve 'D 'M 'T"),
        ("apostrophes", "Rock'n'roll ''s 's' 'sx O'Neil's '' ' 'll'll"),
        ("chinese", "一只猫坐在窗台上，看着雨。今天天气很好！"),
        ("japanese", "猫が窓辺に座って、雨を眺めている。カタカナとひらがな。"),
        ("korean", "고양이가 창턱에 앉아 비를 보고 있다. 안녕하세요!"),
        ("cyrillic", "Кошка сидит на подоконнике и смотрит на дождь. Ёжик!"),
        ("arabic", "قطة تجلس على حافة النافذة وتشاهد المطر. ١٢٣٤"),
        ("devanagari", "एक बिल्ली खिड़की पर बैठी बारिश देख रही है। क्षत्रिय"),
        ("thai_hebrew_greek", "แมวนั่งอยู่ שלום עולם Καλημέρα κόσμε"),
        ("emoji", "Hi 👋🏽 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 heart ❤️ JP 🇯🇵 ok👍🏿👍"),
        ("digits", "0 1 12 123 1234 12345 3.14159 1,000,000 2024-06-11 10:30pm $99.99 1e-5"),
        ("long_digits", "123456789012345678901234567890 00000000 ①②③ Ⅻ ½ ٣٤٥ ९८"),
        ("decomposed", "Cafe\u0301 nin\u0303o A\u030angstro\u0308m e\u0301e\u0300e\u0302 "
                       "o\u0308\u0304 q\u0307\u0323"),
        ("precomposed", "Café niño Ångström éèê ȫ"),
        ("tabs", "a\tb\t\tc\t \td\t"),
        ("crlf", "line one\r\nline two\r\n\r\nline four\r\rx\n\r"),
        ("spaces", "a  b   c    d     e      f"),
        ("leading_trailing", "   leading and trailing   "),
        ("newlines", "\n\n\nx\n \n \n\t\n  \n"),
        ("space_before_punct", "Hello , world ! ( x ) [ y ] { z } ... --"),
        ("url", "See https://example.com/path/to?q=1&x=y#frag or http://a.b.c:8080/."),
        ("email", "mail me: first.last+tag@example.co.uk, <user@host>"),
        ("code_python", "def f(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n"
                        "\tprint(f(3))\n"),
        ("code_c", "int main(void) {\n    printf(\"%d\\n\", a[i++]);\n    return 0;\n}\n"),
        ("json", "{\"key\": [1, 2.5, null, true], \"k2\": \"v\\u00e9\"}"),
        ("markdown", "# Title\n\n* item **bold** _it_\n> quote\n```\ncode\n```"),
        ("mixed_scripts", "Hello世界Привет123abcمرحباשלום🙂x"),
        ("special_template_empty", TEMPLATE.format("")),
        ("special_template_prompt", TEMPLATE.format("A cat sitting on a windowsill, watching the "
                                                    "rain.")),
        ("special_template_chinese", TEMPLATE.format("一只戴着帽子的柴犬，油画风格")),
        ("special_template_multiline", TEMPLATE.format("line 1\nline 2\r\n  indented\t tab")),
        ("special_adjacent", "<|im_start|><|im_start|><|im_end|>abc<|im_end|>def<|endoftext|>"),
        ("special_vision", "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Describe."),
        ("special_partial", "<|im_start <|im_start| im_start|> <|im_end|<|im_end|> <|IM_START|>"),
        ("special_nested", "<<|im_end|>> |<|endoftext|>| <|<|im_start|>|>"),
        ("special_unspecial", "<tool_call>{\"a\":1}</tool_call> <think>hmm</think> "
                              "<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>"),
        ("special_combining_after", "<|im_start|>\u0301x e<|im_end|>\u0301 "),
        ("special_spaces", " <|im_start|> \n<|im_end|>\n\n<|endoftext|> "),
    ]
    texts += UNICODE_EDGES
    texts += long_texts(rng)
    # Random mixtures of the characters that each step treats specially.
    pool = list("aZ0 9'sStTlLrReEvVmMdD\t\n\r!?.,-_<|>#@") + [
        "\u0301", "\u0316", "\u00a0", "\u3000", "\u200b", "\u180e", "\u2028", "\u0085",
        "é", "ß", "ſ", "K", "Å", "你", "の", "가", "\u1100", "\u1161", "я", "ع", "क", "\u094d",
        "😀", "👍", "\U0001f3fd", "\u200d", "\ufe0f", "①", "٣", "\U00031350", "\U00011f50",
        "\u1df9", "\U00011935", "\U00011930", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
        "<|im_start", "|>", "\x00", "\x7f",
    ]
    for k in range(200):
        n = rng.randrange(1, 40)
        texts.append((f"random_{k:03d}", "".join(rng.choice(pool) for _ in range(n))))
    names = [n for n, _ in texts]
    assert len(set(names)) == len(names), "corpus names must be unique"
    return texts


def byte_token_ids(tok):
    """The id of each byte's symbol (GPT-2's byte-level alphabet)."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbol, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbol[b] = chr(b)
        else:
            symbol[b] = chr(256 + extra)
            extra += 1
    return {b: tok.token_to_id(s) for b, s in symbol.items()}


def decode_cases(tok, texts):
    byte_id = byte_token_ids(tok)
    seqs = []
    for name in ("special_template_prompt", "special_unspecial", "emoji", "decomposed",
                 "special_vision", "empty"):
        text = dict(texts)[name]
        seqs.append(tok.encode(text).ids)
    raw = [
        [0xE4],                     # a character's first byte alone
        [0xE4, 0xBD],               # two of its three bytes
        [0xE4, 0xBD, 0xA0],         # the whole of 你
        [0xC0, 0x80],               # overlong
        [0xED, 0xA0, 0x80],         # a surrogate
        [0xF4, 0x90, 0x80, 0x80],   # above U+10FFFF
        [0xF0, 0x9F, 0x98],         # an emoji cut short
        [0x61, 0x80, 0x62, 0xFF],   # stray continuation byte, invalid byte
        [0xF0, 0x9F, 0x98, 0x80, 0xE4],
    ]
    for bs in raw:
        seqs.append([byte_id[b] for b in bs])
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    seqs.append([byte_id[0xE4], im_start, byte_id[0xBD], byte_id[0xA0], im_end])
    cases = []
    for ids in seqs:
        for skip in (False, True):
            cases.append({"ids": ids, "skip_special": skip,
                          "text": tok.decode(ids, skip_special_tokens=skip)})
    return cases


def transformers_ids(folder, texts):
    """Ids from transformers' Qwen2Tokenizer on vocab.json + merges.txt + tokenizer_config.json
    alone (a copy of the folder without tokenizer.json)."""
    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory(prefix="gen-tokenizer-") as tmp:
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(os.path.join(folder, name), tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        return [tok(text, add_special_tokens=True)["input_ids"] for _, text in texts]


def ids_file(folder, name, texts, tokenizer_name):
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    ids = [tok.encode(text).ids for _, text in texts]
    other = transformers_ids(folder, texts)
    for (case, text), a, b in zip(texts, ids, other):
        if a != b:
            sys.exit(f"{name}: {case}: tokenizers and transformers disagree on {text!r}:\n"
                     f"  {a}\n  {b}")
    lookups = {t: tok.token_to_id(t) for t in
               ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<tool_call>",
                "Ġ", "Ċ", "a", "Ġthe", "<|no_such_token|>", "")}
    return {
        "reference": f"tokenizers {tokenizers.__version__}",
        "generator": "tools/golden/gen_tokenizer.py",
        "tokenizer": tokenizer_name,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "token_to_id": {k: (-1 if v is None else v) for k, v in lookups.items()},
        "ids": ids,
        "decode": decode_cases(tok, texts),
    }, tok


FLAG_TEXTS = [
    " <|im_start|>  user\n x <|im_end|>  y\t<|im_end|>\u3000z",
    "<|im_start|> <|im_start|> <|im_end|><|im_end|>  ",
    "\u03a9 \u2126 x\u2126y \u2126\u0301",
    "cafe\u0301 café cafe",
    "thing singing ing",
    "a<|endoftext|>b  <think> x\u3000\u3000<think>",
]


def flags_file():
    """The flags variant of the small fixture. transformers' Qwen2Tokenizer drops lstrip and
    rstrip of the tokens it names special (it adds them again without flags), so only
    tokenizers is the reference here; the C side honours the flags from either file."""
    src = os.path.join(REPO, SMALL)
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    with open(os.path.join(src, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    added = config["added_tokens_decoder"]
    by_content = {v["content"]: v for v in added.values()}
    by_content["<|im_start|>"].update(lstrip=True, rstrip=True)
    by_content["<|im_end|>"].update(rstrip=True)
    by_content["<|endoftext|>"].update(normalized=True)
    by_content["<think>"].update(lstrip=True, normalized=True)
    plain = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False,
             "special": False}
    first = max(int(k) for k in added) + 1
    added[str(first)] = dict(plain, content="\u2126")      # OHM SIGN; its NFC is U+03A9
    added[str(first + 1)] = dict(plain, content="café")
    added[str(vocab["ing"])] = dict(plain, content="ing", normalized=False)  # a vocab token
    tj["added_tokens"] = sorted((dict(id=int(k), **v) for k, v in added.items()),
                                key=lambda t: t["id"])
    tok = Tokenizer.from_str(json.dumps(tj))
    return {
        "reference": f"tokenizers {tokenizers.__version__}",
        "generator": "tools/golden/gen_tokenizer.py",
        "tokenizer": SMALL + " with tokenizer_config below",
        "tokenizer_config": config,
        "added_tokens": tj["added_tokens"],
        "texts": FLAG_TEXTS,
        "ids": [tok.encode(t).ids for t in FLAG_TEXTS],
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def reference_nfc(tok, text):
    """What decode(encode(text)) must be: the reference's NFC of the text between the added
    tokens (found leftmost, then longest), the tokens as they are."""
    added = sorted((t.content for t in tok.get_added_tokens_decoder().values()), key=len,
                   reverse=True)
    out, plain, i = [], [], 0
    while i < len(text):
        hit = next((a for a in added if text.startswith(a, i)), None)
        if hit is None:
            plain.append(text[i])
            i += 1
            continue
        out.append(tok.normalizer.normalize_str("".join(plain)))
        out.append(hit)
        plain = []
        i += len(hit)
    out.append(tok.normalizer.normalize_str("".join(plain)))
    return "".join(out)


def generate(args):
    texts = corpus()
    os.makedirs(args.out, exist_ok=True)
    small, small_tok = ids_file(os.path.join(REPO, SMALL), "small", texts, SMALL)
    cases = []
    for (name, text), ids in zip(texts, small["ids"]):
        case = {"name": name, "text": text}
        decoded = small_tok.decode(ids, skip_special_tokens=False)
        if decoded != reference_nfc(small_tok, text):
            sys.exit(f"small: {name}: decode(encode(x)) is not the NFC of x: {decoded!r}")
        if decoded != text:
            case["normalized"] = decoded
        cases.append(case)
    write_json(os.path.join(args.out, "corpus.json"),
               {"generator": "tools/golden/gen_tokenizer.py", "cases": cases})
    write_json(os.path.join(args.out, "small.json"), small)
    write_json(os.path.join(args.out, "flags.json"), flags_file())
    print(f"{args.out}: {len(texts)} texts; small.json, flags.json")
    if os.path.isfile(os.path.join(args.real, "tokenizer.json")):
        real, real_tok = ids_file(args.real, "qwen2", texts, REAL_NAME)
        for (name, text), ids, case in zip(texts, real["ids"], cases):
            if real_tok.decode(ids, skip_special_tokens=False) != case.get("normalized", text):
                sys.exit(f"qwen2: {name}: decodes differently from the small vocabulary")
        write_json(os.path.join(args.out, "qwen2.json"), real)
        print(f"{args.out}: qwen2.json")
    else:
        print(f"{args.real}: not there; qwen2.json left as it is")


# ---- the sweep ----

def probes(c):
    """Strings that show how each step treats code point c: its class in the split pattern
    (letter, digit, space, other), the contractions, its combining class and compositions."""
    out = ["a" + c + "a", "!" + c, "'" + c + "x", "'" + c + "lx", " " + c + c + "\n", c + "1",
           "x\u0301" + c, "x" + c + "\u0316", "x\u05b0" + c, "x" + c + "\U0001d16e",
           "x\u0345" + c]
    nfd = unicodedata.normalize("NFD", c)
    if nfd != c:
        out.append(nfd)
    return out


def sweep(args):
    cli = os.path.join(args.sweep, "diffusiond-tokenize")
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    sep = "<|endoftext|>"  # an added token: the probes on one line stay independent
    lines = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        lines.append(sep.join(probes(chr(cp))))
    print(f"sweep: {len(lines)} lines, reference...", file=sys.stderr)
    want = [e.ids for e in tok.encode_batch(lines)]
    print("sweep: diffusiond-tokenize...", file=sys.stderr)
    stdin = "".join(json.dumps(s) + "\n" for s in lines)
    r = subprocess.run([cli, args.tokenizer], input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{cli} failed: {r.stderr}")
    got = [json.loads(x) for x in r.stdout.splitlines()]
    bad = [(s, w, g) for s, w, g in zip(lines, want, got) if w != g]
    if len(got) != len(want):
        sys.exit(f"{cli} answered {len(got)} lines of {len(want)}")
    for s, w, g in bad[:20]:
        print(f"differs: {s!r}\n  reference {w}\n  ours      {g}")
    print(f"sweep: {len(lines)} lines, {len(bad)} differ")
    sys.exit(1 if bad else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "golden", "tokenizer"))
    ap.add_argument("--real", default=REAL, help="the real Qwen2 tokenizer folder")
    ap.add_argument("--sweep", metavar="BUILD", help="compare BUILD/diffusiond-tokenize with "
                    "the reference on every code point")
    ap.add_argument("--tokenizer", default=os.path.join(REPO, SMALL),
                    help="the tokenizer folder for --sweep")
    args = ap.parse_args()
    if args.sweep:
        sweep(args)
    else:
        generate(args)


if __name__ == "__main__":
    main()
