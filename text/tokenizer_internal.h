/* tokenizer_internal: what the tokenizer's own sources (text/tokenizer*.c) share: buffers, the
 * Unicode steps, the split pattern, BPE, and the tokenizer struct. Other modules use
 * text/tokenizer.h. */
#ifndef DIFFUSIOND_TEXT_TOKENIZER_INTERNAL_H
#define DIFFUSIOND_TEXT_TOKENIZER_INTERNAL_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "text/tokenizer.h"

/* Ids at or above TOK_MAX_ID, and more than TOK_MAX_MERGES merges, are refused when loading:
 * a merge then packs into 64 bits (two ids and a rank), which keeps the merge table small
 * enough to stay in cache. Real vocabularies are far below (Qwen2: about 151,700 ids and
 * 151,387 merges). */
#define TOK_ID_BITS 20
#define TOK_RANK_BITS 24
#define TOK_MAX_ID (1 << TOK_ID_BITS)
#define TOK_MAX_MERGES ((1u << TOK_RANK_BITS) - 2)

/* ---- growable buffers (tokenizer.c); each function returns 0, or -1 out of memory ---- */

typedef struct {
    char *p;
    size_t len, cap;
} tok_bytes_t;

typedef struct {
    int32_t *p;
    size_t len, cap;
} tok_ids_t;

int tok_bytes_reserve(tok_bytes_t *b, size_t extra);
int tok_bytes_append(tok_bytes_t *b, const void *data, size_t len);
int tok_ids_reserve(tok_ids_t *v, size_t extra);

/* ---- Unicode (tokenizer_unicode.c) ---- */

/* 0 if s[0..len) is well-formed UTF-8; else -1, with the offset of the first bad byte in *bad
 * and what is wrong with it in *why (a static string). */
int tok_utf8_check(const char *s, size_t len, size_t *bad, const char **why);

/* Appends s[0..len) with every ill-formed subsequence replaced by U+FFFD, one per maximal
 * subpart as Unicode recommends and Rust's String::from_utf8_lossy does. */
int tok_utf8_append_lossy(tok_bytes_t *out, const char *s, size_t len);

/* Scratch for tok_nfc_append: code points, reused across calls of one thread. */
typedef struct {
    int32_t *cp;
    size_t cap;
} tok_nfc_scratch_t;

/* Appends the NFC form of the well-formed UTF-8 s[0..len), as the reference computes it. */
int tok_nfc_append(tok_bytes_t *out, const char *s, size_t len, tok_nfc_scratch_t *scratch);
void tok_nfc_scratch_free(tok_nfc_scratch_t *scratch);
/* The Unicode version of utf8proc that tok_nfc_append's corrections were derived against. */
extern const char tok_nfc_unicode_version[];

/* Unicode's White_Space property (what the reference's added-token lstrip/rstrip strip). */
bool tok_is_white_space(uint32_t cp);

/* Decodes the well-formed UTF-8 character at s (with at least one byte left before end) into
 * *cp and returns its length. */
size_t tok_utf8_next(const char *s, const char *end, uint32_t *cp);
/* Encodes cp into out (4 bytes of room) and returns the length. */
size_t tok_utf8_put(uint32_t cp, char *out);

/* GPT-2's byte-level alphabet: the code point that stands for byte b in token strings, and
 * back (-1 for a code point that stands for no byte). */
uint32_t tok_byte_to_symbol(uint8_t b);
int tok_symbol_to_byte(uint32_t cp);

/* ---- the split pattern (tokenizer_split.c) ---- */

/* Qwen2's pre-tokenizer pattern exactly as tokenizer.json and transformers spell it: the only
 * pattern this tokenizer accepts. */
extern const char tok_qwen2_pattern[];
/* The Unicode version of PCRE2 that the pattern's corrections were derived against. */
extern const char tok_split_unicode_version[];

/* Compiles the PCRE2 form of tok_qwen2_pattern (JIT-compiled where PCRE2 has a JIT).
 * NULL with the reason in err. */
pcre2_code *tok_split_compile(bool *jit, char *err, size_t errlen);

/* Calls piece(ctx, start, len) for each piece of s[0..len) in order: the pattern's matches
 * and the text between them (behaviour "Isolated"), which together cover s. md must come from
 * pcre2_match_data_create_from_pattern(re). Returns 0, the first non-zero value of piece, or
 * -1 with the reason in err if PCRE2 fails (a resource limit). */
typedef int (*tok_piece_fn)(void *ctx, const char *start, size_t len);
int tok_split(const pcre2_code *re, bool jit, pcre2_match_data *md, const char *s, size_t len,
              tok_piece_fn piece, void *ctx, char *err, size_t errlen);

/* ---- merges and BPE (tokenizer_bpe.c) ---- */

/* The merges as a hash table from a pair of ids to its rank (its line in merges.txt), and the
 * id each rank makes. */
typedef struct {
    uint64_t *slots;    /* left << 44 | right << 24 | rank, or TOK_NO_PAIR; size mask + 1 */
    size_t mask;
    int32_t *merged;    /* [rank] -> the id of left + right */
    size_t n_ranks;
} tok_merges_t;

#define TOK_NO_PAIR UINT64_MAX /* no rank reaches 2^24 - 1, so no entry is all ones */
#define TOK_NO_RANK UINT32_MAX

/* An empty table for up to n_ranks merges; -1 out of memory or above TOK_MAX_MERGES. */
int tok_merges_init(tok_merges_t *m, size_t n_ranks);
/* Records that (left, right) merges into merged at rank. A pair seen again takes the later
 * rank, as the reference's map does. rank < n_ranks. */
void tok_merges_add(tok_merges_t *m, int32_t left, int32_t right, int32_t merged,
                    uint32_t rank);
void tok_merges_free(tok_merges_t *m);

/* Scratch for BPE, reused across the pieces of one call. */
typedef struct {
    int32_t *sym;      /* symbols of the word */
    uint32_t *rank;    /* rank of the pair starting at each symbol */
    int32_t *prev, *next;
    uint64_t *heap;    /* (rank << 32 | position) entries of the long-word path */
    size_t cap;
} tok_bpe_scratch_t;

/* Words of more bytes than this go through the heap (O(n log n)); shorter ones through a
 * scan for the lowest rank (O(n^2), faster for the short words that are nearly all of them). */
#define TOK_BPE_SHORT 48

/* Appends the BPE ids of the bytes piece[0..len) (len > 0) to out. byte_id maps each byte to
 * the id of its symbol. long_path: take the heap path whatever the length (for tests). */
int tok_bpe_append(const tok_merges_t *m, const int32_t byte_id[256], const uint8_t *piece,
                   size_t len, bool long_path, tok_bpe_scratch_t *s, tok_ids_t *out);
void tok_bpe_scratch_free(tok_bpe_scratch_t *s);

/* ---- the tokenizer ---- */

/* A string -> id map (the vocabulary's token strings, then added tokens' contents). */
typedef struct {
    uint32_t *slots;    /* index into entries + 1; 0 = empty; size mask + 1 */
    size_t mask;
    struct tok_name {
        uint32_t off, len; /* in blob */
        int32_t id;
    } *entries;
    size_t n, cap;
    char *blob;
    size_t blob_len, blob_cap;
} tok_names_t;

/* What an id is (tokenizer_t.kind). */
enum { TOK_ID_NONE = 0, TOK_ID_MODEL, TOK_ID_ADDED, TOK_ID_SPECIAL };

typedef struct {
    char *content;     /* as the file gives it */
    char *match;       /* what is searched for: content, or NFC(content) when normalized */
    size_t match_len;
    int32_t id;
    bool special, lstrip, rstrip, normalized;
} tok_added_t;

/* The added tokens searched in one pass (those not normalized, on the raw text; the
 * normalized ones on the normalized text), ordered by first byte, longest first. */
typedef struct {
    uint32_t *order;       /* indices into tokenizer_t.added */
    uint32_t first[257];   /* order[first[b] .. first[b + 1]) start with byte b */
    size_t n;
} tok_added_set_t;

struct tokenizer {
    tokenizer_files_t files;
    size_t vocab_size;        /* one past the largest id */
    uint8_t *kind;            /* [vocab_size] TOK_ID_* */
    uint32_t *bytes_off;      /* [vocab_size + 1]: id i decodes to bytes[bytes_off[i] ..
                                 bytes_off[i + 1]) */
    char *bytes;
    tok_names_t names;
    int32_t byte_id[256];     /* the id of each byte's symbol */
    tok_merges_t merges;
    tok_added_t *added;
    size_t n_added;
    tok_added_set_t raw_set, norm_set;
    bool nfc;                 /* the normalizer is NFC (else none) */
    pcre2_code *split;
    bool jit;
};

/* Name map (tokenizer_load.c). */
int32_t tok_names_find(const tok_names_t *m, const char *s, size_t len);

#endif
