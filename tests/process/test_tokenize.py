"""diffusiond-tokenize, the tokenizer on the command line: the reference's ids for the whole
golden corpus (through both kinds of tokenizer folder), the way back with --decode, and clear
errors, naming the line, for bad input, a missing folder and bad arguments."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import BUILD, REPO

TOKENIZE = os.path.join(BUILD, "diffusiond-tokenize")
SMALL = os.path.join(REPO, "tests/fixtures/qwen2-tokenizer-small")
REAL = os.path.join(os.path.dirname(REPO), "shared/data/qwen2-tokenizer")
GOLDEN = os.path.join(REPO, "tests/golden/tokenizer")


def load(name):
    with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
        return json.load(f)


def run(*args, stdin=""):
    return subprocess.run([TOKENIZE, *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def lines_of(values):
    return "".join(json.dumps(v) + "\n" for v in values)


def output_lines(stdout):
    """The output's lines, cut at \n only: JSON strings may hold U+2028 and the like, which
    str.splitlines() would also cut at."""
    return stdout.split("\n")[:-1]


def encode(folder, texts, *args):
    r = run(*args, folder, stdin=lines_of(texts))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return [json.loads(line) for line in output_lines(r.stdout)]


@pytest.mark.parametrize("files", ["vocab", "json", "auto"])
def test_the_corpus_gives_the_reference_ids(files):
    texts = [c["text"] for c in load("corpus.json")["cases"]]
    assert encode(SMALL, texts, "--files", files) == load("small.json")["ids"]


def test_the_real_vocabulary_gives_the_reference_ids():
    if not os.path.isfile(os.path.join(REAL, "vocab.json")):
        pytest.skip(f"{REAL} (the real Qwen2 vocabulary) is not there")
    texts = [c["text"] for c in load("corpus.json")["cases"]]
    assert encode(REAL, texts) == load("qwen2.json")["ids"]


def test_decode_gives_the_normalized_text_back():
    cases = load("corpus.json")["cases"]
    ids = load("small.json")["ids"]
    r = run("--decode", SMALL, stdin=lines_of(ids))
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in output_lines(r.stdout)]
    assert got == [c.get("normalized", c["text"]) for c in cases]


def test_decode_cases_with_and_without_special_tokens():
    cases = load("small.json")["decode"]
    for skip in (False, True):
        chosen = [c for c in cases if c["skip_special"] == skip]
        args = ["--decode", "--skip-special"] if skip else ["--decode"]
        r = run(*args, SMALL, stdin=lines_of(c["ids"] for c in chosen))
        assert r.returncode == 0, r.stderr
        assert [json.loads(line) for line in output_lines(r.stdout)] == [c["text"] for c in chosen]


def test_empty_input_and_empty_text():
    r = run(SMALL)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert encode(SMALL, ["", "\u0000"]) == [[], [188]]


@pytest.mark.parametrize("mode,lines,message", [
    ([], ['"ok"', "not json", '"never read"'], "stdin:2: not JSON"),
    ([], ['"ok"', "42"], "stdin:2: expected a JSON string"),
    ([], ['"\\ud800"'], "stdin:1: not JSON"),
    ([], [""], "stdin:1: not JSON"),
    (["--decode"], ["[1, 2]", "[1, 999999]"],
     "stdin:2: ids: id 999999 at position 1 is not in the vocabulary"),
    (["--decode"], ['"text"'], "stdin:1: expected a JSON array of ids"),
    (["--decode"], ["[1, 2.5]"], "stdin:1: element 1 is not a whole number"),
    (["--decode"], ["[1, 4294967296]"], "stdin:1: element 1 is not a whole number"),
])
def test_a_bad_line_stops_the_run_and_is_named(mode, lines, message):
    r = run(*mode, SMALL, stdin="\n".join(lines) + "\n")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith("diffusiond-tokenize: ")
    assert message in r.stderr
    # the lines before the bad one were answered, none after it
    bad = int(message.split(":")[1])
    assert len(output_lines(r.stdout)) == bad - 1


def test_raw_bytes_that_are_not_utf8_are_refused():
    p = subprocess.run([TOKENIZE, SMALL], input=b'"ok"\n"\xc0\x80"\n', capture_output=True,
                       timeout=60)
    assert p.returncode == 1
    assert b"stdin:2: not JSON" in p.stderr
    assert output_lines(p.stdout.decode()) == [json.dumps(encode(SMALL, ["ok"])[0])]


def test_a_missing_folder_is_named(tmp_path):
    r = run(str(tmp_path / "nope"), stdin='"x"\n')
    assert r.returncode == 1
    assert f"{tmp_path / 'nope'}: No such file or directory" in r.stderr
    assert r.stdout == ""


def test_a_folder_without_a_tokenizer_is_named(tmp_path):
    r = run(str(tmp_path), stdin='"x"\n')
    assert r.returncode == 1
    assert "no tokenizer" in r.stderr and str(tmp_path) in r.stderr


def test_a_broken_merges_file_is_named(tmp_path):
    for name in ("vocab.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(SMALL, name), tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ Ġ\nnot a merge\n", encoding="utf-8")
    r = run(str(tmp_path), stdin='"x"\n')
    assert r.returncode == 1
    assert "merges.txt:3: expected two tokens separated by one space" in r.stderr


@pytest.mark.parametrize("args,message", [
    ([], "expected one TOKENIZER_DIR"),
    ([SMALL, SMALL], "expected one TOKENIZER_DIR"),
    (["--files", "yaml", SMALL], "--files wants auto, vocab or json"),
    (["--skip-special", SMALL], "--skip-special goes with --decode"),
    (["--frobnicate", SMALL], "usage:"),
])
def test_bad_arguments(args, message):
    r = run(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr


def test_help():
    r = run("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: diffusiond-tokenize")
    assert "stdin:3" in r.stdout  # the bad-line rule is documented
