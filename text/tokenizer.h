/* tokenizer: the byte-level BPE tokenizer of Qwen2 (Qwen2.5-VL, and so Qwen-Image's text
 * encoder), giving the ids that Hugging Face tokenizers 0.23.3 gives, and back.
 *
 * Encoding follows the reference's order: added tokens (<|im_start|>, <|image_pad|>, ...) are
 * found in the raw text first, leftmost and then longest; the text between them is put in NFC,
 * split with Qwen2's pattern, each piece's bytes are mapped to GPT-2's byte symbols and merged
 * by BPE, lowest merge rank first. Nothing is added around the ids (Qwen2 has no BOS or EOS).
 * Where the reference's Unicode data differs from utf8proc's and PCRE2's (it normalizes with
 * Unicode 9 tables and splits with Unicode 16 classes), the C side follows the reference; see
 * tokenizer_unicode.c and tokenizer_split.c.
 *
 * Thread safety: a loaded tokenizer_t is never written again. Any number of threads may call
 * tokenizer_encode, tokenizer_decode, tokenizer_token_to_id and tokenizer_vocab_size on one
 * tokenizer at the same time (each call keeps its scratch to itself); only tokenizer_free must
 * wait for all of them.
 *
 * Errors are written to err as "WHERE: what": "tests/x/vocab.json:3: ...", "text: invalid
 * UTF-8 at byte 17: ...", "ids: ...". Nothing here asserts on input or files. */
#ifndef DIFFUSIOND_TEXT_TOKENIZER_H
#define DIFFUSIOND_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer_t;

/* Which files of a tokenizer folder describe the tokenizer. */
typedef enum {
    /* VOCAB when the folder has vocab.json and merges.txt (what a Qwen-Image folder's
     * tokenizer/ ships, and what transformers' Qwen2Tokenizer reads), else JSON. */
    TOKENIZER_FILES_AUTO = 0,
    /* vocab.json + merges.txt + tokenizer_config.json (its added_tokens_decoder gives the
     * added tokens); the normalizer and split pattern are Qwen2Tokenizer's. */
    TOKENIZER_FILES_VOCAB,
    /* tokenizer.json alone; its normalizer, pre-tokenizer, model and decoder must be Qwen2's
     * (anything else is refused with the field named). */
    TOKENIZER_FILES_JSON,
} tokenizer_files_t;

/* Loads the tokenizer in folder dir (TOKENIZER_FILES_AUTO). NULL with the reason in err. */
tokenizer_t *tokenizer_load(const char *dir, char *err, size_t errlen);
tokenizer_t *tokenizer_load_files(const char *dir, tokenizer_files_t files, char *err,
                                  size_t errlen);
/* Frees *tok and sets it to NULL; NULL or *tok NULL is fine. */
void tokenizer_free(tokenizer_t **tok);

/* Encodes utf8[0..len) (it may hold NUL characters). On success returns 0 and sets *ids to a
 * malloc'd array of *n ids that the caller free()s (never NULL, also when *n is 0: the empty
 * string has no ids). Returns -1 with the reason in err for text that is not well-formed
 * UTF-8 ("text: invalid UTF-8 at byte 5: truncated sequence (0xE4)"), or when out of memory;
 * *ids is then NULL. Scratch memory is up to about 60 bytes per byte of the longest piece (a
 * word, a run of spaces): callers that take text from outside bound its length. */
int tokenizer_encode(const tokenizer_t *tok, const char *utf8, size_t len, int32_t **ids,
                     size_t *n, char *err, size_t errlen);

/* tokenizer_decode flags. */
#define TOKENIZER_DECODE_SKIP_SPECIAL 1u /* leave out added tokens marked special */

/* Decodes ids[0..n) into a malloc'd, NUL-terminated string *utf8 of *len bytes (without the
 * NUL) that the caller free()s. Each token gives its bytes (GPT-2's byte symbols mapped back);
 * added tokens give their content (the reference maps them through the same byte map, which
 * leaves ASCII content, all that Qwen2's have, as it is; so does this). Byte sequences that
 * are not UTF-8, as from ids that cut a character in two, become U+FFFD, as in the reference,
 * so *utf8 is always valid UTF-8. An id outside the vocabulary is an error naming it and its
 * position (the reference skips it silently). */
int tokenizer_decode(const tokenizer_t *tok, const int32_t *ids, size_t n, unsigned flags,
                     char **utf8, size_t *len, char *err, size_t errlen);

/* The id of a token as the vocabulary spells it ("<|endoftext|>", "Ġthe"), added tokens
 * included; -1 if there is none. */
int32_t tokenizer_token_to_id(const tokenizer_t *tok, const char *token);

/* One past the largest id, added tokens included (Qwen2's 151,643 regular tokens are ids
 * 0..151642; its added tokens follow). */
size_t tokenizer_vocab_size(const tokenizer_t *tok);

/* Which files were read: TOKENIZER_FILES_VOCAB or TOKENIZER_FILES_JSON. */
tokenizer_files_t tokenizer_files(const tokenizer_t *tok);

#endif
