/* fuzz_tokenizer: libFuzzer target for the tokenizer, with the small fixture vocabulary
 * (tests/fixtures/qwen2-tokenizer-small, found from the repository root). Inputs whose first
 * byte is 0xFF are ids to decode (4 bytes each, little-endian, any value); all others are text
 * to encode, well-formed UTF-8 or not. Checked, beside "no crash, no leak, no read out of
 * bounds":
 *  - encode gives 0, or -1 with a "text: " message;
 *  - every id is inside the vocabulary, and decode takes them back without an error;
 *  - what decode gives is well-formed UTF-8, and is the input itself when that is ASCII (NFC
 *    changes no ASCII);
 *  - encoding what decode gave gives the same ids again (the text is NFC already and the
 *    added tokens fall in the same places);
 *  - decoding arbitrary ids gives 0 with well-formed UTF-8, or -1 with an "ids: " message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

#define FIXTURE "tests/fixtures/qwen2-tokenizer-small"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tokenizer_t *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[1024];
    tok = tokenizer_load(FIXTURE, err, sizeof err);
    if (tok == NULL) {
        fprintf(stderr, "fuzz_tokenizer: %s (run from the repository root)\n", err);
        abort();
    }
    return 0;
}

static void check_utf8(const char *s, size_t len, const char *what)
{
    size_t bad;
    const char *why;
    if (tok_utf8_check(s, len, &bad, &why) != 0 || s[len] != '\0') {
        fprintf(stderr, "%s: not well-formed UTF-8 at byte %zu: %s\n", what, bad, why);
        abort();
    }
}

static void fuzz_decode(const uint8_t *data, size_t size)
{
    size_t n = size / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (ids == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)((uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                           (uint32_t)data[4 * i + 2] << 16 | (uint32_t)data[4 * i + 3] << 24);
    char err[512], *text;
    size_t len;
    unsigned flags = n > 0 && (ids[0] & 1) ? TOKENIZER_DECODE_SKIP_SPECIAL : 0;
    int rc = tokenizer_decode(tok, ids, n, flags, &text, &len, err, sizeof err);
    free(ids);
    if (rc == 0) {
        check_utf8(text, len, "decode");
        free(text);
    } else if (rc != -1 || strncmp(err, "ids: ", 5) != 0 || text != NULL) {
        fprintf(stderr, "decode: rc %d, message \"%s\"\n", rc, err);
        abort();
    }
}

static void fuzz_encode(const char *text, size_t size)
{
    char err[512];
    int32_t *ids;
    size_t n;
    int rc = tokenizer_encode(tok, text, size, &ids, &n, err, sizeof err);
    if (rc != 0) {
        if (rc != -1 || strncmp(err, "text: ", 6) != 0 || ids != NULL) {
            fprintf(stderr, "encode: rc %d, message \"%s\"\n", rc, err);
            abort();
        }
        return;
    }
    size_t vocab = tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= vocab) {
            fprintf(stderr, "encode: id %d at %zu is outside the vocabulary\n", ids[i], i);
            abort();
        }
    char *back;
    size_t len;
    if (tokenizer_decode(tok, ids, n, 0, &back, &len, err, sizeof err) != 0) {
        fprintf(stderr, "decode of encode's ids: %s\n", err);
        abort();
    }
    check_utf8(back, len, "decode(encode(x))");
    bool ascii = true;
    for (size_t i = 0; i < size; i++)
        ascii &= (uint8_t)text[i] < 0x80;
    if (ascii && (len != size || memcmp(back, text, size) != 0)) {
        fprintf(stderr, "decode(encode(x)) differs from the ASCII x\n");
        abort();
    }
    int32_t *again;
    size_t n2;
    if (tokenizer_encode(tok, back, len, &again, &n2, err, sizeof err) != 0 || n2 != n ||
        memcmp(again, ids, n * sizeof *ids) != 0) {
        fprintf(stderr, "encode(decode(encode(x))) differs from encode(x)\n");
        abort();
    }
    free(again);
    free(back);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly size bytes, so that ASan sees any read past the end. */
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    if (size > 0 && data[0] == 0xFF)
        fuzz_decode((const uint8_t *)buf + 1, size - 1);
    else
        fuzz_encode(buf, size);
    free(buf);
    return 0;
}
