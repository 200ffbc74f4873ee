/* tokenizer: encoding and decoding with a loaded tokenizer (loading is tokenizer_load.c).
 * Each call keeps its scratch in an encode_t of its own, which is what makes a tokenizer
 * usable from many threads at once without a lock. */
#include "text/tokenizer_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- buffers ---- */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) {
        if (cap2 > SIZE_MAX / 2 / elem)
            return -1;
        cap2 *= 2;
    }
    void *q = realloc(*p, cap2 * elem);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = cap2;
    return 0;
}

int tok_bytes_reserve(tok_bytes_t *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len)
        return -1;
    return grow((void **)&b->p, &b->cap, b->len + extra, 1);
}

int tok_bytes_append(tok_bytes_t *b, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    if (tok_bytes_reserve(b, len) != 0)
        return -1;
    memcpy(b->p + b->len, data, len);
    b->len += len;
    return 0;
}

int tok_ids_reserve(tok_ids_t *v, size_t extra)
{
    if (extra > SIZE_MAX / sizeof *v->p - v->len)
        return -1;
    return grow((void **)&v->p, &v->cap, v->len + extra, sizeof *v->p);
}

/* ---- encoding ---- */

typedef struct {
    const tokenizer_t *tok;
    tok_ids_t ids;
    tok_bytes_t norm;           /* the NFC of the segment being encoded */
    tok_nfc_scratch_t nfc;
    tok_bpe_scratch_t bpe;
    pcre2_match_data *md;
    char *err;
    size_t errlen;
} encode_t;

static int encode_fail(encode_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int encode_fail(encode_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, e->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int encode_piece(void *ctx, const char *piece, size_t len)
{
    encode_t *e = ctx;
    if (tok_bpe_append(&e->tok->merges, e->tok->byte_id, (const uint8_t *)piece, len, false,
                       &e->bpe, &e->ids) != 0)
        return encode_fail(e, "text: out of memory");
    return 0;
}

/* Normalized text without added tokens: split, then BPE on each piece. */
static int encode_plain(encode_t *e, const char *s, size_t len)
{
    return tok_split(e->tok->split, e->tok->jit, e->md, s, len, encode_piece, e, e->err,
                     e->errlen);
}

static int push_id(encode_t *e, int32_t id)
{
    if (tok_ids_reserve(&e->ids, 1) != 0)
        return encode_fail(e, "text: out of memory");
    e->ids.p[e->ids.len++] = id;
    return 0;
}

/* The next added token of set in s[from..len): the leftmost, then the longest there. Returns
 * its index in tok->added and its start in *start, or -1. */
static long find_added(const tokenizer_t *tok, const tok_added_set_t *set, const char *s,
                       size_t len, size_t from, size_t *start)
{
    for (size_t i = from; i < len; i++) {
        uint8_t b = (uint8_t)s[i];
        for (uint32_t k = set->first[b]; k < set->first[b + 1]; k++) {
            const tok_added_t *a = &tok->added[set->order[k]];
            if (a->match_len <= len - i && memcmp(s + i, a->match, a->match_len) == 0) {
                *start = i;
                return (long)set->order[k];
            }
        }
    }
    return -1;
}

/* Where the run of White_Space characters that ends at s + at begins (not before floor). */
static size_t white_space_before(const char *s, size_t floor, size_t at)
{
    while (at > floor) {
        size_t k = at - 1;
        while (k > floor && ((uint8_t)s[k] & 0xC0) == 0x80)
            k--;
        uint32_t cp;
        tok_utf8_next(s + k, s + at, &cp);
        if (!tok_is_white_space(cp))
            break;
        at = k;
    }
    return at;
}

static size_t white_space_after(const char *s, size_t len, size_t at)
{
    while (at < len) {
        uint32_t cp;
        size_t n = tok_utf8_next(s + at, s + len, &cp);
        if (!tok_is_white_space(cp))
            break;
        at += n;
    }
    return at;
}

typedef int (*segment_fn)(encode_t *e, const char *s, size_t len);

/* Splits s[0..len) at the added tokens of set: each token gives its id, the text between
 * goes to text_fn. As in the reference's AddedVocabulary, lstrip and rstrip tokens take the
 * White_Space next to them, and the search goes on after the token itself. */
static int split_added(encode_t *e, const tok_added_set_t *set, const char *s, size_t len,
                       segment_fn text_fn)
{
    const tokenizer_t *tok = e->tok;
    size_t done = 0, from = 0; /* s[0..done) is encoded; the search goes on at from */
    while (set->n > 0) {
        size_t start;
        long k = find_added(tok, set, s, len, from, &start);
        if (k < 0)
            break;
        const tok_added_t *a = &tok->added[k];
        size_t end = start + a->match_len;
        from = end;
        if (start < done)
            continue; /* inside the white space an rstrip token took */
        if (a->lstrip)
            start = white_space_before(s, done, start);
        if (a->rstrip)
            end = white_space_after(s, len, end);
        if (start > done && text_fn(e, s + done, start - done) != 0)
            return -1;
        if (push_id(e, a->id) != 0)
            return -1;
        done = end;
    }
    if (done < len)
        return text_fn(e, s + done, len - done);
    return 0;
}

/* Text between the added tokens of the raw text: normalize it, then look for the added
 * tokens that match normalized text, then split and merge what is left. */
static int encode_segment(encode_t *e, const char *s, size_t len)
{
    if (!e->tok->nfc)
        return split_added(e, &e->tok->norm_set, s, len, encode_plain);
    /* The same buffer serves every segment: nothing of a segment is needed after it. */
    e->norm.len = 0;
    if (tok_nfc_append(&e->norm, s, len, &e->nfc) != 0)
        return encode_fail(e, "text: out of memory");
    return split_added(e, &e->tok->norm_set, e->norm.p, e->norm.len, encode_plain);
}

int tokenizer_encode(const tokenizer_t *tok, const char *utf8, size_t len, int32_t **ids,
                     size_t *n, char *err, size_t errlen)
{
    *ids = NULL;
    *n = 0;
    size_t bad;
    const char *why;
    if (len > INT32_MAX) {
        snprintf(err, errlen, "text: %zu bytes is more than the %d a call takes", len,
                 INT32_MAX);
        return -1;
    }
    if (tok_utf8_check(utf8, len, &bad, &why) != 0) {
        snprintf(err, errlen, "text: invalid UTF-8 at byte %zu: %s (0x%02X)", bad, why,
                 (uint8_t)utf8[bad]);
        return -1;
    }
    encode_t e = {.tok = tok, .err = err, .errlen = errlen};
    e.md = pcre2_match_data_create_from_pattern(tok->split, NULL);
    int rc = e.md == NULL ? encode_fail(&e, "text: out of memory") : 0;
    if (rc == 0)
        rc = tok_ids_reserve(&e.ids, len / 3 + 1) != 0 ? encode_fail(&e, "text: out of memory")
                                                       : 0;
    if (rc == 0)
        rc = split_added(&e, &tok->raw_set, utf8, len, encode_segment);
    pcre2_match_data_free(e.md);
    free(e.norm.p);
    tok_nfc_scratch_free(&e.nfc);
    tok_bpe_scratch_free(&e.bpe);
    if (rc != 0) {
        free(e.ids.p);
        return -1;
    }
    *ids = e.ids.p;
    *n = e.ids.len;
    return 0;
}

/* ---- decoding ---- */

int tokenizer_decode(const tokenizer_t *tok, const int32_t *ids, size_t n, unsigned flags,
                     char **utf8, size_t *len, char *err, size_t errlen)
{
    *utf8 = NULL;
    *len = 0;
    tok_bytes_t raw = {0}, out = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= tok->vocab_size || tok->kind[id] == TOK_ID_NONE) {
            snprintf(err, errlen, "ids: id %d at position %zu is not in the vocabulary "
                                  "(0..%zu)", (int)id, i, tok->vocab_size - 1);
            free(raw.p);
            return -1;
        }
        if ((flags & TOKENIZER_DECODE_SKIP_SPECIAL) && tok->kind[id] == TOK_ID_SPECIAL)
            continue;
        uint32_t at = tok->bytes_off[id];
        if (tok_bytes_append(&raw, tok->bytes + at, tok->bytes_off[id + 1] - at) != 0)
            goto oom;
    }
    /* The bytes of the whole sequence are made text at once: ids may split a character. */
    if (tok_utf8_append_lossy(&out, raw.p ? raw.p : "", raw.len) != 0 ||
        tok_bytes_append(&out, "", 1) != 0)
        goto oom;
    free(raw.p);
    *utf8 = out.p;
    *len = out.len - 1;
    return 0;
oom:
    free(raw.p);
    free(out.p);
    snprintf(err, errlen, "ids: out of memory");
    return -1;
}

/* ---- lookups ---- */

int32_t tokenizer_token_to_id(const tokenizer_t *tok, const char *token)
{
    return tok_names_find(&tok->names, token, strlen(token));
}

size_t tokenizer_vocab_size(const tokenizer_t *tok)
{
    return tok->vocab_size;
}

tokenizer_files_t tokenizer_files(const tokenizer_t *tok)
{
    return tok->files;
}
