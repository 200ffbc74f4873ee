/* tokenizer_split: Qwen2's pre-tokenizer, the split of normalized text into the pieces that
 * BPE merges within, written for PCRE2 so that it matches as the reference's Oniguruma does. */
#include "text/tokenizer_internal.h"

#include <stdio.h>

const char tok_qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* The same pattern with its classes spelled out, because PCRE2 10.42 and the reference's
 * Oniguruma (inside tokenizers 0.23.3) do not agree on them:
 *  - Oniguruma has Unicode 16 tables, PCRE2 Unicode 14: the letters and digits assigned in
 *    Unicode 15 and 16 (CJK extension H, Kawi, Garay, Kaktovik numerals, ...) are added to
 *    \p{L} and \p{N} below, or "a\U00031350b" would be three pieces instead of one;
 *  - PCRE2's \s counts U+180E MONGOLIAN VOWEL SEPARATOR as a space, Oniguruma's does not
 *    (it has been a format character since Unicode 6.3): \s is written as the White_Space
 *    property, which is what Oniguruma matches (U+0085, U+00A0, U+3000 included, U+200B not).
 * Case-insensitive matching of the contractions agrees (both fold U+017F LONG S to s).
 * Found by splitting, with both engines, probe strings around every code point
 * (tools/golden/gen_tokenizer.py --sweep does it for the whole tokenizer); the unit test
 * fails if PCRE2's Unicode version changes. */
#define LETTERS                                                                            \
    "\\p{L}\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"      \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"  \
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"    \
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}"   \
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"             \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"              \
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}"   \
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define DIGITS                                                                             \
    "\\p{N}\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}"                  \
    "\\x{11F50}-\\x{11F59}\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}"  \
    "\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"
#define SPACE                                                                              \
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"   \
    "\\x{202F}\\x{205F}\\x{3000}"

static const char pcre2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    "|[^\\r\\n" LETTERS DIGITS "]?[" LETTERS "]+"
    "|[" DIGITS "]"
    "| ?[^" SPACE LETTERS DIGITS "]+[\\r\\n]*"
    "|[" SPACE "]*[\\r\\n]+"
    "|[" SPACE "]+(?![^" SPACE "])"
    "|[" SPACE "]+";

const char tok_split_unicode_version[] = "14.0.0";

pcre2_code *tok_split_compile(bool *jit, char *err, size_t errlen)
{
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pcre2_pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &code, &offset, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        snprintf(err, errlen, "split pattern: PCRE2: %s at offset %zu", (const char *)msg,
                 (size_t)offset);
        return NULL;
    }
    /* Without a JIT (some architectures) the interpreter gives the same matches, slower. */
    *jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    return re;
}

int tok_split(const pcre2_code *re, bool jit, pcre2_match_data *md, const char *s, size_t len,
              tok_piece_fn piece, void *ctx, char *err, size_t errlen)
{
    PCRE2_SPTR subject = (PCRE2_SPTR)s;
    size_t off = 0, prev = 0; /* s[prev..) is not yet handed out */
    while (off < len) {
        /* The text was checked as UTF-8 (and NFC keeps it so): no second check. */
        int rc = jit ? pcre2_jit_match(re, subject, len, off, 0, md, NULL)
                     : pcre2_match(re, subject, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            snprintf(err, errlen, "text: splitting at byte %zu: PCRE2: %s", off,
                     (const char *)msg);
            return -1;
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) {
            /* Every alternative takes at least one character, so this does not happen; if
             * it did, an empty piece would add no ids: step over one character. */
            uint32_t cp;
            if (ov[1] >= len)
                break;
            off = ov[1] + tok_utf8_next(s + ov[1], s + len, &cp);
            continue;
        }
        int r;
        if (ov[0] > prev && (r = piece(ctx, s + prev, ov[0] - prev)) != 0)
            return r;
        if ((r = piece(ctx, s + ov[0], ov[1] - ov[0])) != 0)
            return r;
        prev = off = ov[1];
    }
    if (prev < len)
        return piece(ctx, s + prev, len - prev);
    return 0;
}
