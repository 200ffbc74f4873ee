/* tokenizer_unicode: the tokenizer's Unicode steps: UTF-8 checking and lossy repair, NFC as
 * the reference computes it (utf8proc, with the reference's older tables where they differ),
 * White_Space, and GPT-2's byte-level alphabet. */
#include "text/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- UTF-8 ---- */

/* The length of the well-formed UTF-8 sequence at p (left > 0 bytes available), or 0 when
 * there is none: then *subpart is how many bytes form the maximal ill-formed subpart (the
 * bytes one U+FFFD replaces) and *why says what is wrong. Follows Table 3-7 of the Unicode
 * Standard: the second byte's range depends on the first, which is what rules out overlong
 * forms, surrogates and code points above U+10FFFF. */
static size_t utf8_sequence(const uint8_t *p, size_t left, size_t *subpart, const char **why)
{
    uint8_t b = p[0];
    if (b < 0x80)
        return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF; /* the second byte's range */
    const char *second_why = "truncated sequence";
    if (b < 0xC0) {
        *subpart = 1;
        *why = "unexpected continuation byte";
        return 0;
    } else if (b < 0xC2) {
        *subpart = 1;
        *why = "overlong encoding";
        return 0;
    } else if (b < 0xE0) {
        need = 2;
    } else if (b < 0xF0) {
        need = 3;
        if (b == 0xE0) {
            lo = 0xA0;
            second_why = "overlong encoding";
        } else if (b == 0xED) {
            hi = 0x9F;
            second_why = "encoded surrogate";
        }
    } else if (b < 0xF5) {
        need = 4;
        if (b == 0xF0) {
            lo = 0x90;
            second_why = "overlong encoding";
        } else if (b == 0xF4) {
            hi = 0x8F;
            second_why = "code point above U+10FFFF";
        }
    } else {
        *subpart = 1;
        *why = "byte that never occurs in UTF-8";
        return 0;
    }
    for (size_t k = 1; k < need; k++) {
        if (k >= left) {
            *subpart = k;
            *why = "truncated sequence";
            return 0;
        }
        uint8_t c = p[k];
        uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (c < l || c > h) {
            *subpart = k;
            /* a continuation byte outside the lead's range: the lead's own rule broken */
            *why = (k == 1 && c >= 0x80 && c <= 0xBF) ? second_why : "truncated sequence";
            return 0;
        }
    }
    return need;
}

int tok_utf8_check(const char *s, size_t len, size_t *bad, const char **why)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        /* eight ASCII bytes at a time: most text is mostly ASCII */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080u)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        size_t subpart;
        size_t n = utf8_sequence(p + i, len - i, &subpart, why);
        if (n == 0) {
            *bad = i;
            return -1;
        }
        i += n;
    }
    return 0;
}

int tok_utf8_append_lossy(tok_bytes_t *out, const char *s, size_t len)
{
    static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0, good = 0; /* s[good..i) is well-formed and not yet appended */
    while (i < len) {
        size_t subpart;
        const char *why;
        size_t n = utf8_sequence(p + i, len - i, &subpart, &why);
        if (n != 0) {
            i += n;
            continue;
        }
        if (tok_bytes_append(out, s + good, i - good) != 0 ||
            tok_bytes_append(out, replacement, 3) != 0)
            return -1;
        i += subpart;
        good = i;
    }
    return tok_bytes_append(out, s + good, len - good);
}

size_t tok_utf8_next(const char *s, const char *end, uint32_t *cp)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = p[0] < 0x80 ? 1 : p[0] < 0xE0 ? 2 : p[0] < 0xF0 ? 3 : 4;
    if (n > (size_t)(end - s))
        n = 1; /* only on text that was not checked: never read past end */
    switch (n) {
    case 1:
        *cp = p[0];
        break;
    case 2:
        *cp = (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
        break;
    case 3:
        *cp = (uint32_t)(p[0] & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
        break;
    default:
        *cp = (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 |
              (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
    }
    return n;
}

size_t tok_utf8_put(uint32_t cp, char *out)
{
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- NFC ---- */

/* The reference normalizes with the unicode-normalization-alignments crate, whose tables are
 * those of Unicode 9.0; utf8proc 2.8 has Unicode 15.0. Stability rules mean that a character
 * keeps its combining class and decomposition once assigned, so the two differ only on the
 * characters below: assigned after 9.0 with a non-zero combining class, a decomposition, or a
 * part in a composition (U+11935 + U+11930 -> U+11938). To the reference they are unassigned:
 * starters that neither decompose nor compose. Such a character cuts the text into parts that
 * NFC treats independently, so normalizing the text between them with utf8proc and copying
 * them unchanged gives the reference's result. Found by comparing the reference with utf8proc
 * on every code point that utf8proc normalizes (tools/golden/gen_tokenizer.py --sweep checks
 * the whole tokenizer that way); the unit test fails if utf8proc's Unicode version changes. */
static const uint32_t inert_ranges[][2] = {
    {0x07FD, 0x07FD},   {0x0898, 0x089F},   {0x08CA, 0x08D3},   {0x09FE, 0x09FE},
    {0x0C3C, 0x0C3C},   {0x0D3B, 0x0D3C},   {0x0EBA, 0x0EBA},   {0x1715, 0x1715},
    {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},   {0xA82C, 0xA82C},   {0x10D24, 0x10D27},
    {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85},
    {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x11930, 0x11930}, {0x11935, 0x11935}, {0x11938, 0x11938}, {0x1193D, 0x1193E},
    {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34}, {0x11A47, 0x11A47},
    {0x11A99, 0x11A99}, {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97},
    {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136},
    {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

/* The Unicode version of utf8proc's tables that inert_ranges was derived against. */
const char tok_nfc_unicode_version[] = "15.0.0";

static bool nfc_inert(uint32_t cp)
{
    if (cp < inert_ranges[0][0])
        return false;
    size_t lo = 0, hi = sizeof inert_ranges / sizeof inert_ranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < inert_ranges[mid][0])
            hi = mid;
        else if (cp > inert_ranges[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

#define NFC_OPTIONS (UTF8PROC_STABLE | UTF8PROC_COMPOSE) /* utf8proc_NFC's */

/* Appends utf8proc's NFC of s[0..len), a run without inert characters. */
static int nfc_run(tok_bytes_t *out, const char *s, size_t len, tok_nfc_scratch_t *sc)
{
    if (len == 0)
        return 0;
    utf8proc_ssize_t n;
    for (;;) {
        n = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len,
                               (utf8proc_int32_t *)sc->cp, (utf8proc_ssize_t)sc->cap,
                               NFC_OPTIONS);
        if (n < 0)
            return -1; /* cannot happen on checked UTF-8; treated as out of memory */
        if ((size_t)n <= sc->cap)
            break;
        size_t cap = (size_t)n + (size_t)n / 2 + 16;
        int32_t *cp = realloc(sc->cp, cap * sizeof *cp);
        if (cp == NULL)
            return -1;
        sc->cp = cp;
        sc->cap = cap;
    }
    n = utf8proc_normalize_utf32((utf8proc_int32_t *)sc->cp, n, NFC_OPTIONS);
    if (n < 0 || tok_bytes_reserve(out, (size_t)n * 4) != 0)
        return -1;
    for (utf8proc_ssize_t i = 0; i < n; i++)
        out->len += tok_utf8_put((uint32_t)sc->cp[i], out->p + out->len);
    return 0;
}

/* Appends the NFC of s[0..len), splitting it at inert characters. */
static int nfc_chunk(tok_bytes_t *out, const char *s, size_t len, tok_nfc_scratch_t *sc)
{
    const char *end = s + len, *run = s, *p = s;
    while (p < end) {
        uint32_t cp;
        size_t n = tok_utf8_next(p, end, &cp);
        if (nfc_inert(cp)) {
            if (nfc_run(out, run, (size_t)(p - run), sc) != 0 ||
                tok_bytes_append(out, p, n) != 0)
                return -1;
            run = p + n;
        }
        p += n;
    }
    return nfc_run(out, run, (size_t)(end - run), sc);
}

/* NFC never joins across the start of an ASCII character: it is a starter (combining class
 * 0) and the second half of no composition, so nothing before it reorders or composes with
 * anything after it. ASCII is therefore copied as it is, and only each run of non-ASCII
 * characters, with the ASCII character before it (which may compose with it: e + U+0301),
 * goes through utf8proc. */
int tok_nfc_append(tok_bytes_t *out, const char *s, size_t len, tok_nfc_scratch_t *sc)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && p[i] < 0x80 && (i + 1 == len || p[i + 1] < 0x80))
            i++;
        if (tok_bytes_append(out, s + start, i - start) != 0)
            return -1;
        if (i == len)
            break;
        start = i;
        i++; /* an ASCII byte before a non-ASCII one, or a non-ASCII one */
        while (i < len && p[i] >= 0x80)
            i++;
        if (nfc_chunk(out, s + start, i - start, sc) != 0)
            return -1;
    }
    return 0;
}

void tok_nfc_scratch_free(tok_nfc_scratch_t *sc)
{
    free(sc->cp);
    sc->cp = NULL;
    sc->cap = 0;
}

/* ---- character classes ---- */

bool tok_is_white_space(uint32_t cp)
{
    if (cp <= 0x20)
        return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
    if (cp < 0x85)
        return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* ---- GPT-2's byte-level alphabet ---- */

/* Bytes that are printable Latin-1 stand for themselves; the other 68 (controls, space, DEL,
 * the C1 range, NBSP, soft hyphen) take U+0100 onwards in byte order, so that no token string
 * holds a space or a control character. */
uint32_t tok_byte_to_symbol(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    if (b <= 0x20)
        return 0x100u + b;
    if (b <= 0xA0)
        return 0x100u + 0x21 + (uint32_t)(b - 0x7F);
    return 0x100u + 0x21 + 0x22; /* 0xAD */
}

int tok_symbol_to_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + 0x21)
        return (int)(cp - 0x100);
    if (cp >= 0x121 && cp < 0x121 + 0x22)
        return (int)(cp - 0x121 + 0x7F);
    if (cp == 0x143)
        return 0xAD;
    return -1;
}
