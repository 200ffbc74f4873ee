/* test_tokenizer: the Qwen2 tokenizer against the reference's ids (tools/golden/
 * gen_tokenizer.py, tests/golden/tokenizer/): every corpus text with the small fixture
 * vocabulary, loaded from vocab.json + merges.txt and from tokenizer.json, the same with the
 * real vocabulary when ../shared/data/qwen2-tokenizer is there (skipped otherwise), added
 * tokens with lstrip/rstrip/normalized, decoding, and the round trip decode(encode(x)) ==
 * NFC(x). Then what the reference cannot show: invalid UTF-8 and ids, bad tokenizer folders,
 * both BPE paths, threads. Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "tests/common/files.h"
#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

#define GOLDEN "tests/golden/tokenizer"
#define SMALL "tests/fixtures/qwen2-tokenizer-small"
#define REAL "../shared/data/qwen2-tokenizer"

static char err[2048];
static char tmp_dir[64];

/* ---- helpers ---- */

static void assert_contains(const char *text, const char *want)
{
    if (strstr(text, want) == NULL)
        fail_msg("expected \"%s\" in \"%s\"", want, text);
}

static json_t *load_json(const char *path)
{
    json_error_t jerr;
    json_t *v = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (v == NULL)
        fail_msg("%s:%d: %s", path, jerr.line, jerr.text);
    return v;
}

static tokenizer_t *load_ok(const char *dir, tokenizer_files_t files)
{
    tokenizer_t *tok = tokenizer_load_files(dir, files, err, sizeof err);
    if (tok == NULL)
        fail_msg("%s", err);
    return tok;
}

/* Prints text with everything outside printable ASCII escaped, at most 300 bytes of it. */
static void print_escaped(const char *s, size_t len)
{
    size_t n = len < 300 ? len : 300;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '\\')
            putchar(c);
        else
            printf("\\x%02x", c);
    }
    if (n < len)
        printf("... (%zu bytes)", len);
}

static void print_ids(const char *label, const int32_t *ids, size_t n, size_t from)
{
    size_t start = from > 8 ? from - 8 : 0, end = n < from + 24 ? n : from + 24;
    printf("  %s (%zu ids; from position %zu):", label, n, start);
    for (size_t i = start; i < end; i++)
        printf(" %d", (int)ids[i]);
    printf(end < n ? " ...\n" : "\n");
}

/* Compares ids with the expected JSON array; on a difference prints the text, the first
 * differing position and both sequences, and fails. */
static void expect_ids(const char *what, const char *text, size_t len, const int32_t *got,
                       size_t n, const json_t *want)
{
    size_t wn = json_array_size(want), i = 0;
    int32_t *w = malloc((wn + 1) * sizeof *w);
    assert_non_null(w);
    for (size_t k = 0; k < wn; k++)
        w[k] = (int32_t)json_integer_value(json_array_get(want, k));
    while (i < n && i < wn && got[i] == w[i])
        i++;
    if (i == n && n == wn) {
        free(w);
        return;
    }
    printf("%s: ids differ at position %zu for text \"", what, i);
    print_escaped(text, len);
    printf("\"\n");
    print_ids("expected", w, wn, i);
    print_ids("got     ", got, n, i);
    free(w);
    fflush(stdout);
    fail_msg("%s: ids differ from the reference", what);
}

/* A string member of a JSON object, with its length (it may hold NUL). */
static const char *json_text(const json_t *obj, const char *key, size_t *len)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

/* ---- the reference's ids ---- */

/* Every corpus text against ids file `name`, then decode(encode(text)) against the
 * reference's decode (NFC of the text, added tokens as they are). */
static void check_corpus(tokenizer_t *tok, const char *name, const char *file)
{
    json_t *corpus = load_json(GOLDEN "/corpus.json"), *golden = load_json(file);
    const json_t *cases = json_object_get(corpus, "cases"), *ids = json_object_get(golden, "ids");
    assert_true(json_array_size(cases) > 200);
    assert_int_equal(json_array_size(cases), json_array_size(ids));
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        size_t len = 0, nlen = 0;
        const char *text = json_text(c, "text", &len);
        const char *normalized = json_text(c, "normalized", &nlen);
        assert_non_null(text);
        if (normalized == NULL) {
            normalized = text;
            nlen = len;
        }
        char what[256];
        snprintf(what, sizeof what, "%s: %s", name,
                 json_string_value(json_object_get(c, "name")));
        int32_t *got;
        size_t n;
        if (tokenizer_encode(tok, text, len, &got, &n, err, sizeof err) != 0)
            fail_msg("%s: %s", what, err);
        assert_non_null(got);
        expect_ids(what, text, len, got, n, json_array_get(ids, i));
        char *back;
        size_t back_len;
        if (tokenizer_decode(tok, got, n, 0, &back, &back_len, err, sizeof err) != 0)
            fail_msg("%s: %s", what, err);
        if (back_len != nlen || memcmp(back, normalized, nlen) != 0) {
            printf("%s: decode(encode(x)) is \"", what);
            print_escaped(back, back_len);
            printf("\", expected \"");
            print_escaped(normalized, nlen);
            printf("\"\n");
            fflush(stdout);
            fail_msg("%s: the round trip differs", what);
        }
        assert_int_equal(back[back_len], '\0');
        free(back);
        free(got);
    }
    json_decref(corpus);
    json_decref(golden);
}

/* The decode cases, the lookups and the vocabulary size of ids file `file`. */
static void check_decode_and_lookups(tokenizer_t *tok, const char *file)
{
    json_t *golden = load_json(file);
    const json_t *cases = json_object_get(golden, "decode");
    assert_true(json_array_size(cases) >= 20);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i), *jids = json_object_get(c, "ids");
        size_t n = json_array_size(jids), want_len = 0;
        int32_t *ids = malloc((n + 1) * sizeof *ids);
        assert_non_null(ids);
        for (size_t k = 0; k < n; k++)
            ids[k] = (int32_t)json_integer_value(json_array_get(jids, k));
        unsigned flags = json_is_true(json_object_get(c, "skip_special"))
                             ? TOKENIZER_DECODE_SKIP_SPECIAL : 0;
        const char *want = json_text(c, "text", &want_len);
        assert_non_null(want);
        char *text;
        size_t len;
        if (tokenizer_decode(tok, ids, n, flags, &text, &len, err, sizeof err) != 0)
            fail_msg("decode case %zu: %s", i, err);
        if (len != want_len || memcmp(text, want, len) != 0) {
            printf("decode case %zu (flags %u): got \"", i, flags);
            print_escaped(text, len);
            printf("\", expected \"");
            print_escaped(want, want_len);
            printf("\"\n");
            fflush(stdout);
            fail_msg("decode case %zu differs from the reference", i);
        }
        free(text);
        free(ids);
    }
    const char *key;
    json_t *value;
    json_object_foreach(json_object_get(golden, "token_to_id"), key, value) {
        if (tokenizer_token_to_id(tok, key) != json_integer_value(value))
            fail_msg("token_to_id(\"%s\") is %d, expected %d", key,
                     (int)tokenizer_token_to_id(tok, key), (int)json_integer_value(value));
    }
    assert_int_equal(tokenizer_vocab_size(tok), json_integer_value(json_object_get(golden,
                                                                                   "vocab_size")));
    json_decref(golden);
}

static void test_small_vocab_files(void **state)
{
    tokenizer_t *tok = load_ok(SMALL, TOKENIZER_FILES_VOCAB);
    assert_int_equal(tokenizer_files(tok), TOKENIZER_FILES_VOCAB);
    check_corpus(tok, "small (vocab.json)", GOLDEN "/small.json");
    check_decode_and_lookups(tok, GOLDEN "/small.json");
    tokenizer_free(&tok);
    assert_null(tok);
}

static void test_small_tokenizer_json(void **state)
{
    tokenizer_t *tok = load_ok(SMALL, TOKENIZER_FILES_JSON);
    assert_int_equal(tokenizer_files(tok), TOKENIZER_FILES_JSON);
    check_corpus(tok, "small (tokenizer.json)", GOLDEN "/small.json");
    check_decode_and_lookups(tok, GOLDEN "/small.json");
    tokenizer_free(&tok);
}

/* tokenizer_load picks vocab.json + merges.txt when both are there. */
static void test_small_auto(void **state)
{
    tokenizer_t *tok = tokenizer_load(SMALL, err, sizeof err);
    if (tok == NULL)
        fail_msg("%s", err);
    assert_int_equal(tokenizer_files(tok), TOKENIZER_FILES_VOCAB);
    assert_int_equal(tokenizer_token_to_id(tok, "<|im_start|>"), 2295);
    tokenizer_free(&tok);
    tokenizer_free(&tok); /* a second free of the NULL is fine */
    tokenizer_free(NULL);
}

static bool have_real(void)
{
    struct stat sb;
    if (stat(REAL "/tokenizer.json", &sb) == 0 && stat(REAL "/vocab.json", &sb) == 0)
        return true;
    printf("skipped: %s (the real Qwen2 vocabulary) is not there; the small fixture's tests "
           "cover the code\n", REAL);
    return false;
}

static void test_real_vocab_files(void **state)
{
    if (!have_real())
        skip();
    tokenizer_t *tok = load_ok(REAL, TOKENIZER_FILES_VOCAB);
    check_corpus(tok, "qwen2 (vocab.json)", GOLDEN "/qwen2.json");
    check_decode_and_lookups(tok, GOLDEN "/qwen2.json");
    tokenizer_free(&tok);
}

static void test_real_tokenizer_json(void **state)
{
    if (!have_real())
        skip();
    tokenizer_t *tok = load_ok(REAL, TOKENIZER_FILES_JSON);
    check_corpus(tok, "qwen2 (tokenizer.json)", GOLDEN "/qwen2.json");
    check_decode_and_lookups(tok, GOLDEN "/qwen2.json");
    tokenizer_free(&tok);
}

/* ---- a temporary folder ---- */

static const char *tmp_path(const char *name)
{
    static char paths[4][512];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof paths[0], "%s/%s", tmp_dir, name);
    return p;
}

static void write_text(const char *name, const char *text)
{
    test_write_text(tmp_path(name), text);
}

static void write_json(const char *name, const json_t *v)
{
    assert_int_equal(json_dump_file(v, tmp_path(name), JSON_COMPACT), 0);
}

static void copy_fixture(const char *name)
{
    char src[256];
    snprintf(src, sizeof src, SMALL "/%s", name);
    test_copy_file(src, tmp_path(name));
}

static void clear_tmp(void)
{
    DIR *d = opendir(tmp_dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            unlink(tmp_path(e->d_name));
    closedir(d);
}

static int setup(void **state)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_tokenizer.XXXXXX");
    return mkdtemp(tmp_dir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    clear_tmp();
    rmdir(tmp_dir);
    return 0;
}

/* ---- added tokens with flags ---- */

/* flags.json: the small vocabulary with lstrip/rstrip/normalized added tokens, written out
 * as both kinds of folder. */
static void test_added_token_flags(void **state)
{
    json_t *golden = load_json(GOLDEN "/flags.json");
    clear_tmp();
    copy_fixture("vocab.json");
    copy_fixture("merges.txt");
    write_json("tokenizer_config.json", json_object_get(golden, "tokenizer_config"));
    json_t *tj = load_json(SMALL "/tokenizer.json");
    json_object_set(tj, "added_tokens", json_object_get(golden, "added_tokens"));
    write_json("tokenizer.json", tj);
    json_decref(tj);
    const json_t *texts = json_object_get(golden, "texts"), *ids = json_object_get(golden, "ids");
    /* vocab.json + tokenizer_config.json: transformers would drop lstrip/rstrip of the special
     * tokens where tokenizers honours them, so that folder is refused, naming the token */
    tokenizer_t *refused = tokenizer_load_files(tmp_dir, TOKENIZER_FILES_VOCAB, err, sizeof err);
    assert_null(refused);
    assert_non_null(strstr(err, "lstrip/rstrip on a special token"));
    assert_non_null(strstr(err, "added_tokens_decoder[\"2295\"]"));
    for (int files = TOKENIZER_FILES_JSON; files <= TOKENIZER_FILES_JSON; files++) {
        tokenizer_t *tok = load_ok(tmp_dir, (tokenizer_files_t)files);
        for (size_t i = 0; i < json_array_size(texts); i++) {
            const json_t *t = json_array_get(texts, i);
            int32_t *got;
            size_t n;
            if (tokenizer_encode(tok, json_string_value(t), json_string_length(t), &got, &n,
                                 err, sizeof err) != 0)
                fail_msg("%s", err);
            char what[64];
            snprintf(what, sizeof what, "flags text %zu (%s)", i,
                     files == TOKENIZER_FILES_VOCAB ? "vocab.json" : "tokenizer.json");
            expect_ids(what, json_string_value(t), json_string_length(t), got, n,
                       json_array_get(ids, i));
            free(got);
        }
        tokenizer_free(&tok);
    }
    json_decref(golden);
}

/* An added token given the id of a vocabulary token: the id would mean two things (the
 * reference quietly renumbers the added token), so the folder is refused, both kinds. */
static void test_added_token_id_collision(void **state)
{
    (void)state;
    clear_tmp();
    copy_fixture("vocab.json");
    copy_fixture("merges.txt");
    json_t *tj = load_json(SMALL "/tokenizer.json");
    json_array_append_new(json_object_get(tj, "added_tokens"),
                          json_pack("{s:i, s:s, s:b}", "id", 100, "content", "<zz>", "special", 1));
    write_json("tokenizer.json", tj);
    json_decref(tj);
    tokenizer_t *tok = tokenizer_load_files(tmp_dir, TOKENIZER_FILES_JSON, err, sizeof err);
    assert_null(tok);
    assert_non_null(strstr(err, "\"<zz>\" has id 100, which a vocabulary token already has"));
}

/* ---- input the reference cannot be given ---- */

static void expect_encode_error(const tokenizer_t *tok, const char *text, size_t len,
                                const char *want)
{
    int32_t *ids = (int32_t *)1;
    size_t n = 99;
    err[0] = '\0';
    assert_int_equal(tokenizer_encode(tok, text, len, &ids, &n, err, sizeof err), -1);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_contains(err, want);
}

static void test_invalid_utf8(void **state)
{
    tokenizer_t *tok = load_ok(SMALL, TOKENIZER_FILES_AUTO);
    static const struct {
        const char *text;
        size_t len;
        const char *want;
    } cases[] = {
        {"\x80", 1, "text: invalid UTF-8 at byte 0: unexpected continuation byte (0x80)"},
        {"ab\xBF", 3, "at byte 2: unexpected continuation byte"},
        {"\xC0\x80", 2, "at byte 0: overlong encoding"},
        {"x\xC1\xBF", 3, "at byte 1: overlong encoding"},
        {"\xE0\x80\x80", 3, "at byte 0: overlong encoding"},
        {"\xF0\x8F\xBF\xBF", 4, "at byte 0: overlong encoding"},
        {"a\xED\xA0\x80", 4, "at byte 1: encoded surrogate"},
        {"\xED\xBF\xBF", 3, "encoded surrogate"},
        {"\xF4\x90\x80\x80", 4, "code point above U+10FFFF"},
        {"\xF5\x80\x80\x80", 4, "byte that never occurs in UTF-8"},
        {"\xFF", 1, "byte that never occurs in UTF-8"},
        {"abc\xE4\xBD", 5, "at byte 3: truncated sequence"},
        {"\xE4\xBD" "a", 3, "at byte 0: truncated sequence"},
        {"\xF0\x9F\x98", 3, "truncated sequence"},
        {"\xC3", 1, "truncated sequence"},
        {"<|im_start|>\x80", 13, "at byte 12"},
        {"ok ok ok ok \xF0\x9F\x98\x80 \xC3\x28", 19, "at byte 17: truncated sequence"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_encode_error(tok, cases[i].text, cases[i].len, cases[i].want);
    /* the largest and smallest of each length are fine */
    static const char good[] = "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80"
                               "\xF4\x8F\xBF\xBF\xED\x9F\xBF\xEE\x80\x80";
    int32_t *ids;
    size_t n;
    assert_int_equal(tokenizer_encode(tok, good, sizeof good - 1, &ids, &n, err, sizeof err), 0);
    free(ids);
    tokenizer_free(&tok);
}

static void test_empty_and_nul(void **state)
{
    tokenizer_t *tok = load_ok(SMALL, TOKENIZER_FILES_AUTO);
    int32_t *ids;
    size_t n = 99;
    assert_int_equal(tokenizer_encode(tok, "", 0, &ids, &n, err, sizeof err), 0);
    assert_non_null(ids);
    assert_int_equal(n, 0);
    free(ids);
    /* a NUL inside the text is a character like any other, not its end */
    assert_int_equal(tokenizer_encode(tok, "a\0b", 3, &ids, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    char *text;
    size_t len;
    assert_int_equal(tokenizer_decode(tok, ids, n, 0, &text, &len, err, sizeof err), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(text, "a\0b", 3);
    free(text);
    free(ids);
    assert_int_equal(tokenizer_decode(tok, NULL, 0, 0, &text, &len, err, sizeof err), 0);
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    free(text);
    tokenizer_free(&tok);
}

static void test_decode_bad_ids(void **state)
{
    tokenizer_t *tok = load_ok(SMALL, TOKENIZER_FILES_AUTO);
    int32_t size = (int32_t)tokenizer_vocab_size(tok);
    int32_t bad[][3] = {{1, 2, -1}, {size, 1, 2}, {1, INT32_MAX, 2}, {1, 2, INT32_MIN}};
    size_t where[] = {2, 0, 1, 2};
    for (size_t i = 0; i < 4; i++) {
        char *text = (char *)1;
        size_t len = 7;
        assert_int_equal(tokenizer_decode(tok, bad[i], 3, 0, &text, &len, err, sizeof err), -1);
        assert_null(text);
        char want[128];
        snprintf(want, sizeof want, "ids: id %d at position %zu is not in the vocabulary",
                 (int)bad[i][where[i]], where[i]);
        assert_contains(err, want);
    }
    tokenizer_free(&tok);
}

/* An id between the model's and the added tokens that nothing names is no token either. */
static void test_decode_gap_id(void **state)
{
    clear_tmp();
    copy_fixture("vocab.json");
    copy_fixture("merges.txt");
    write_text("tokenizer_config.json",
               "{\"added_tokens_decoder\": "
               "{\"3000\": {\"content\": \"<|x|>\", \"special\": true}}}");
    tokenizer_t *tok = load_ok(tmp_dir, TOKENIZER_FILES_VOCAB);
    assert_int_equal(tokenizer_vocab_size(tok), 3001);
    int32_t ids[] = {2999};
    char *text;
    size_t len;
    assert_int_equal(tokenizer_decode(tok, ids, 1, 0, &text, &len, err, sizeof err), -1);
    assert_contains(err, "id 2999 at position 0");
    ids[0] = 3000;
    assert_int_equal(tokenizer_decode(tok, ids, 1, 0, &text, &len, err, sizeof err), 0);
    assert_string_equal(text, "<|x|>");
    free(text);
    assert_int_equal(tokenizer_decode(tok, ids, 1, TOKENIZER_DECODE_SKIP_SPECIAL, &text, &len,
                                      err, sizeof err), 0);
    assert_string_equal(text, "");
    free(text);
    tokenizer_free(&tok);
}

/* ---- bad folders ---- */

static void expect_load_error(tokenizer_files_t files, const char *want1, const char *want2)
{
    err[0] = '\0';
    tokenizer_t *tok = tokenizer_load_files(tmp_dir, files, err, sizeof err);
    if (tok != NULL) {
        tokenizer_free(&tok);
        fail_msg("loaded, expected an error with \"%s\"", want1);
    }
    assert_contains(err, want1);
    if (want2)
        assert_contains(err, want2);
}

/* A fresh copy of the fixture's vocabulary files in the temporary folder. */
static void fresh_vocab_folder(void)
{
    clear_tmp();
    copy_fixture("vocab.json");
    copy_fixture("merges.txt");
    copy_fixture("tokenizer_config.json");
}

/* tokenizer.json from the fixture with one member of `parent` ("" for the top) replaced. */
static void json_variant(const char *parent, const char *key, json_t *value)
{
    clear_tmp();
    json_t *tj = load_json(SMALL "/tokenizer.json");
    json_t *obj = parent[0] ? json_object_get(tj, parent) : tj;
    json_object_set_new(obj, key, value);
    write_json("tokenizer.json", tj);
    json_decref(tj);
}

static void test_load_errors_folder(void **state)
{
    char path[256];
    tokenizer_t *tok = tokenizer_load("/nonexistent/tokenizer", err, sizeof err);
    assert_null(tok);
    assert_contains(err, "/nonexistent/tokenizer: No such file or directory");
    clear_tmp();
    expect_load_error(TOKENIZER_FILES_AUTO, tmp_dir, "no tokenizer");
    expect_load_error(TOKENIZER_FILES_JSON, "tokenizer.json: ", NULL);
    expect_load_error(TOKENIZER_FILES_VOCAB, "vocab.json:", NULL);
    snprintf(path, sizeof path, SMALL "/vocab.json");
    tok = tokenizer_load(path, err, sizeof err);
    assert_null(tok);
    assert_contains(err, "not a folder");
}

static void test_load_errors_vocab_files(void **state)
{
    fresh_vocab_folder();
    write_text("vocab.json", "{\"a\": 0,");
    expect_load_error(TOKENIZER_FILES_VOCAB, "vocab.json:1:", NULL);
    write_text("vocab.json", "[1, 2]");
    expect_load_error(TOKENIZER_FILES_VOCAB, "vocab.json: not a JSON object", NULL);
    write_text("vocab.json", "{\"a\": -1}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "vocab.json: token \"a\": the id is not", NULL);
    write_text("vocab.json", "{\"a\": \"0\"}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "token \"a\": the id is not", NULL);
    write_text("vocab.json", "{\"a\": 0, \"b\": 0}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "id 0 is given to two tokens", NULL);
    write_text("vocab.json", "{\"a\": 0, \"b\": 1}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "no token for byte 0x00", "byte-level");
    write_text("vocab.json", "{}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "the vocabulary is empty", NULL);

    fresh_vocab_folder();
    write_text("merges.txt", "#version: 0.2\nĠ Ġ\ni n t\n");
    expect_load_error(TOKENIZER_FILES_VOCAB, "merges.txt:3: expected two tokens", NULL);
    write_text("merges.txt", "Ġ Ġ\n\ni n\n");
    expect_load_error(TOKENIZER_FILES_VOCAB, "merges.txt:2: expected two tokens", NULL);
    write_text("merges.txt", "Ġ Ġ\nzzzz q\n");
    expect_load_error(TOKENIZER_FILES_VOCAB, "merges.txt:2: merge \"zzzz q\"",
                      "\"zzzz\" is not in the vocabulary");
    write_text("merges.txt", "Ġ Ġ\nq q\n");
    expect_load_error(TOKENIZER_FILES_VOCAB, "\"qq\" is not in the vocabulary", NULL);
    /* \r\n line ends, as the reference reads them */
    write_text("merges.txt", "#version: 0.2\r\nĠ Ġ\r\ni n\r\n");
    tokenizer_t *tok = load_ok(tmp_dir, TOKENIZER_FILES_VOCAB);
    tokenizer_free(&tok);
    unlink(tmp_path("merges.txt"));
    expect_load_error(TOKENIZER_FILES_VOCAB, "merges.txt: No such file", NULL);

    fresh_vocab_folder();
    unlink(tmp_path("tokenizer_config.json"));
    expect_load_error(TOKENIZER_FILES_VOCAB, "tokenizer_config.json: ", NULL);
    write_text("tokenizer_config.json", "{\"tokenizer_class\": \"LlamaTokenizer\"}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "tokenizer_class \"LlamaTokenizer\" is not "
                                             "supported", NULL);
    write_text("tokenizer_config.json", "{\"add_prefix_space\": true}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "add_prefix_space true is not supported", NULL);
    write_text("tokenizer_config.json", "{\"add_bos_token\": 1}");
    expect_load_error(TOKENIZER_FILES_VOCAB, "\"add_bos_token\" is not true or false", NULL);
}

static void test_load_errors_added_tokens(void **state)
{
    static const struct {
        const char *decoder, *want;
    } cases[] = {
        {"[]", "added_tokens_decoder is not an object"},
        {"{\"x\": {\"content\": \"<a>\"}}", "the key is not an id"},
        {"{\"-4\": {\"content\": \"<a>\"}}", "the key is not an id"},
        {"{\"99999999\": {\"content\": \"<a>\"}}", "the key is not an id"},
        {"{\"3000\": {\"special\": true}}", "\"content\" is missing"},
        {"{\"3000\": {\"content\": \"<a>\", \"single_word\": true}}", "single_word"},
        {"{\"3000\": {\"content\": \"<a>\", \"lstrip\": \"yes\"}}", "\"lstrip\" is not true"},
        {"{\"3000\": {\"content\": \"<a>\"}, \"3001\": {\"content\": \"<a>\"}}",
         "\"<a>\" is added twice"},
        {"{\"5\": {\"content\": \"in\"}}", "\"in\" has id 5 but the vocabulary gives it"},
        {"{\"3000\": 7}", "added_tokens_decoder[\"3000\"]: not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fresh_vocab_folder();
        char text[512];
        snprintf(text, sizeof text, "{\"added_tokens_decoder\": %s}", cases[i].decoder);
        write_text("tokenizer_config.json", text);
        expect_load_error(TOKENIZER_FILES_VOCAB, "tokenizer_config.json", cases[i].want);
    }
}

static void test_load_errors_tokenizer_json(void **state)
{
    json_variant("", "normalizer", json_pack("{s:s}", "type", "NFKC"));
    expect_load_error(TOKENIZER_FILES_JSON, "tokenizer.json: normalizer", NULL);
    json_t *pt = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s, s:b, s:b}]}", "type",
                           "Sequence", "pretokenizers", "type", "Split", "pattern", "Regex",
                           "\\s+", "behavior", "Isolated", "type", "ByteLevel",
                           "add_prefix_space", 0, "use_regex", 0);
    json_variant("", "pre_tokenizer", pt);
    expect_load_error(TOKENIZER_FILES_JSON, "tokenizer.json: pre_tokenizer", NULL);
    json_variant("model", "type", json_string("WordPiece"));
    expect_load_error(TOKENIZER_FILES_JSON, "model: only BPE", NULL);
    json_variant("model", "dropout", json_real(0.1));
    expect_load_error(TOKENIZER_FILES_JSON, "model.dropout", NULL);
    json_variant("model", "continuing_subword_prefix", json_string("##"));
    expect_load_error(TOKENIZER_FILES_JSON, "model.continuing_subword_prefix", NULL);
    json_variant("", "decoder", json_null());
    expect_load_error(TOKENIZER_FILES_JSON, "decoder", NULL);
    json_variant("", "post_processor", json_pack("{s:s}", "type", "TemplateProcessing"));
    expect_load_error(TOKENIZER_FILES_JSON, "post_processor", NULL);
    json_variant("", "truncation", json_pack("{s:i}", "max_length", 8));
    expect_load_error(TOKENIZER_FILES_JSON, "truncation is not supported", NULL);
    json_variant("model", "merges", json_pack("[s]", "Ġ"));
    expect_load_error(TOKENIZER_FILES_JSON, "model.merges[0]: expected", NULL);
    json_variant("model", "merges", json_pack("[[s,s]]", "Ġ", "zz"));
    expect_load_error(TOKENIZER_FILES_JSON, "model.merges[0]: merge \"Ġ zz\"", NULL);
    json_variant("", "added_tokens", json_pack("[{s:s}]", "content", "<x>"));
    expect_load_error(TOKENIZER_FILES_JSON, "added_tokens[0]: \"id\" is not", NULL);
    /* no normalizer is allowed (and then nothing is normalized) */
    json_variant("", "normalizer", json_null());
    tokenizer_t *tok = load_ok(tmp_dir, TOKENIZER_FILES_JSON);
    int32_t *ids;
    size_t n;
    char *text;
    size_t len;
    assert_int_equal(tokenizer_encode(tok, "e\xCC\x81", 3, &ids, &n, err, sizeof err), 0);
    assert_int_equal(tokenizer_decode(tok, ids, n, 0, &text, &len, err, sizeof err), 0);
    assert_string_equal(text, "e\xCC\x81");
    free(text);
    free(ids);
    tokenizer_free(&tok);
}

/* ---- internals ---- */

/* Both BPE paths (the scan for short words, the heap for long ones) give the same ids, on
 * words made of the letters that the fixture's merges join most. */
static void test_bpe_paths_agree(void **state)
{
    tokenizer_t *tok = load_ok(SMALL, TOKENIZER_FILES_AUTO);
    tok_bpe_scratch_t s1 = {0}, s2 = {0};
    tok_ids_t a = {0}, b = {0};
    uint64_t x = 88172645463325252u;
    uint8_t word[300];
    static const char alphabet[] = "etaoinshrdlu ĠaeĊ\t\n'";
    for (int round = 0; round < 3000; round++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t len = 1 + (size_t)(x % (round < 2000 ? 60 : sizeof word));
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            word[i] = (uint8_t)alphabet[x % (sizeof alphabet - 1)];
        }
        a.len = b.len = 0;
        assert_int_equal(tok_bpe_append(&tok->merges, tok->byte_id, word, len, false, &s1, &a), 0);
        assert_int_equal(tok_bpe_append(&tok->merges, tok->byte_id, word, len, true, &s2, &b), 0);
        assert_int_equal(a.len, b.len);
        assert_memory_equal(a.p, b.p, a.len * sizeof *a.p);
        assert_true(a.len <= len);
    }
    tok_bpe_scratch_free(&s1);
    tok_bpe_scratch_free(&s2);
    free(a.p);
    free(b.p);
    tokenizer_free(&tok);
}

static void test_byte_alphabet(void **state)
{
    int seen[0x200] = {0};
    for (int b = 0; b < 256; b++) {
        uint32_t cp = tok_byte_to_symbol((uint8_t)b);
        assert_true(cp < 0x144);
        assert_int_equal(tok_symbol_to_byte(cp), b);
        assert_int_equal(seen[cp]++, 0);
    }
    assert_int_equal(tok_byte_to_symbol(' '), 0x120);  /* 'Ġ' */
    assert_int_equal(tok_byte_to_symbol('\n'), 0x10A); /* 'Ċ' */
    assert_int_equal(tok_symbol_to_byte(0x144), -1);
    assert_int_equal(tok_symbol_to_byte(0x20), -1);
    assert_int_equal(tok_symbol_to_byte(0x4F60), -1);
}

/* The Unicode corrections (tokenizer_unicode.c, tokenizer_split.c) were derived against these
 * library versions; a new utf8proc or PCRE2 may differ from the reference elsewhere. */
static void test_unicode_versions(void **state)
{
    char pcre2[64] = "";
    pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, pcre2);
    if (strcmp(utf8proc_unicode_version(), tok_nfc_unicode_version) != 0 ||
        strcmp(pcre2, tok_split_unicode_version) != 0)
        fail_msg("utf8proc has Unicode %s and PCRE2 %s; the tokenizer's corrections were made "
                 "for %s and %s: run tools/golden/gen_tokenizer.py --sweep BUILD and update "
                 "the tables in text/tokenizer_unicode.c and text/tokenizer_split.c",
                 utf8proc_unicode_version(), pcre2, tok_nfc_unicode_version,
                 tok_split_unicode_version);
}

/* ---- threads ---- */

typedef struct {
    const tokenizer_t *tok;
    const json_t *cases, *ids;
    int failures;
} thread_arg_t;

static void *encode_all(void *p)
{
    thread_arg_t *a = p;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < json_array_size(a->cases); i++) {
            const json_t *t = json_object_get(json_array_get(a->cases, i), "text");
            const json_t *want = json_array_get(a->ids, i);
            int32_t *got;
            size_t n;
            char e[256];
            if (tokenizer_encode(a->tok, json_string_value(t), json_string_length(t), &got, &n,
                                 e, sizeof e) != 0) {
                a->failures++;
                continue;
            }
            if (n != json_array_size(want))
                a->failures++;
            else
                for (size_t k = 0; k < n; k++)
                    a->failures += got[k] != json_integer_value(json_array_get(want, k));
            free(got);
        }
    return NULL;
}

/* One tokenizer, four threads encoding the corpus at once: the same ids as alone. */
static void test_threads(void **state)
{
    tokenizer_t *tok = load_ok(SMALL, TOKENIZER_FILES_AUTO);
    json_t *corpus = load_json(GOLDEN "/corpus.json"), *golden = load_json(GOLDEN "/small.json");
    thread_arg_t args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg_t){tok, json_object_get(corpus, "cases"),
                                 json_object_get(golden, "ids"), 0};
        assert_int_equal(pthread_create(&th[i], NULL, encode_all, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    json_decref(corpus);
    json_decref(golden);
    tokenizer_free(&tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_vocab_files),
        cmocka_unit_test(test_small_tokenizer_json),
        cmocka_unit_test(test_small_auto),
        cmocka_unit_test(test_real_vocab_files),
        cmocka_unit_test(test_real_tokenizer_json),
        cmocka_unit_test(test_added_token_flags),
        cmocka_unit_test(test_added_token_id_collision),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_empty_and_nul),
        cmocka_unit_test(test_decode_bad_ids),
        cmocka_unit_test(test_decode_gap_id),
        cmocka_unit_test(test_load_errors_folder),
        cmocka_unit_test(test_load_errors_vocab_files),
        cmocka_unit_test(test_load_errors_added_tokens),
        cmocka_unit_test(test_load_errors_tokenizer_json),
        cmocka_unit_test(test_bpe_paths_agree),
        cmocka_unit_test(test_byte_alphabet),
        cmocka_unit_test(test_unicode_versions),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
