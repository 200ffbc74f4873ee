/* tokenizer_load: building a tokenizer_t from a tokenizer folder: vocab.json + merges.txt +
 * tokenizer_config.json, or tokenizer.json. Every file is checked before it is used, and a
 * tokenizer that is not Qwen2's byte-level BPE (another normalizer, pattern or model option)
 * is refused with the field named rather than tokenized differently from the reference. */
#include "text/tokenizer_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nn/json_file.h"

/* ---- the name map: token string -> id ---- */

static uint64_t name_hash(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001b3u;
    return h;
}

static int names_grow_index(tok_names_t *m)
{
    size_t cap = m->mask ? (m->mask + 1) * 2 : 1024;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (slots == NULL)
        return -1;
    for (size_t e = 0; e < m->n; e++) {
        const struct tok_name *n = &m->entries[e];
        size_t i = (size_t)name_hash(m->blob + n->off, n->len) & (cap - 1);
        while (slots[i] != 0)
            i = (i + 1) & (cap - 1);
        slots[i] = (uint32_t)e + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return 0;
}

static size_t names_slot(const tok_names_t *m, const char *s, size_t len)
{
    size_t i = (size_t)name_hash(s, len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        uint32_t e = m->slots[i];
        if (e == 0)
            return i;
        const struct tok_name *n = &m->entries[e - 1];
        if (n->len == len && memcmp(m->blob + n->off, s, len) == 0)
            return i;
    }
}

int32_t tok_names_find(const tok_names_t *m, const char *s, size_t len)
{
    if (m->slots == NULL)
        return -1;
    uint32_t e = m->slots[names_slot(m, s, len)];
    return e == 0 ? -1 : m->entries[e - 1].id;
}

/* Adds s -> id. Returns 0, 1 if s is there already (nothing changed), -1 out of memory. */
static int names_add(tok_names_t *m, const char *s, size_t len, int32_t id)
{
    if ((m->n + 1) * 2 > m->mask + 1 && names_grow_index(m) != 0)
        return -1;
    size_t slot = names_slot(m, s, len);
    if (m->slots[slot] != 0)
        return 1;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        struct tok_name *e = realloc(m->entries, cap * sizeof *e);
        if (e == NULL)
            return -1;
        m->entries = e;
        m->cap = cap;
    }
    if (m->blob_len + len > UINT32_MAX)
        return -1;
    if (m->blob_len + len > m->blob_cap) {
        size_t cap = (m->blob_len + len) * 2 + 4096;
        char *b = realloc(m->blob, cap);
        if (b == NULL)
            return -1;
        m->blob = b;
        m->blob_cap = cap;
    }
    memcpy(m->blob + m->blob_len, s, len);
    m->entries[m->n] = (struct tok_name){(uint32_t)m->blob_len, (uint32_t)len, id};
    m->blob_len += len;
    m->slots[slot] = (uint32_t)++m->n;
    return 0;
}

static void names_free(tok_names_t *m)
{
    free(m->slots);
    free(m->entries);
    free(m->blob);
    memset(m, 0, sizeof *m);
}

/* ---- loading state ---- */

typedef struct {
    tokenizer_t *tok;
    char *err;
    size_t errlen;
    int32_t max_id;          /* largest id seen, -1 before any */
    size_t n_model;          /* model tokens */
    size_t n_kinds;          /* entries of tok->kind */
    bool vocab_files;        /* loading vocab.json + merges.txt + tokenizer_config.json */
} loader_t;

static int fail(loader_t *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(loader_t *ld, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->err, ld->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int out_of_memory(loader_t *ld, const char *path)
{
    return fail(ld, "%s: out of memory", path);
}

static void join_path(char *out, size_t cap, const char *dir, const char *name)
{
    size_t n = strlen(dir);
    snprintf(out, cap, "%s%s%s", dir, n > 0 && dir[n - 1] == '/' ? "" : "/", name);
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* A JSON file's top-level object; a file that cannot be opened is named with the reason
 * ("DIR/vocab.json: No such file or directory"). */
static json_t *load_object(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    fclose(f);
    return nn_json_load_object(path, err, errlen);
}

/* An id from JSON: a whole number in [0, TOK_MAX_ID). */
static int json_id(const json_t *v, int32_t *id)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= TOK_MAX_ID)
        return -1;
    *id = (int32_t)x;
    return 0;
}

/* ---- the vocabulary ---- */

/* Records every "token": id of obj (vocab.json, or tokenizer.json's model.vocab). */
static int load_vocab(loader_t *ld, const json_t *obj, const char *where)
{
    if (!json_is_object(obj))
        return fail(ld, "%s: not a JSON object of token: id", where);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        int32_t id;
        if (json_id(value, &id) != 0)
            return fail(ld, "%s: token \"%s\": the id is not a whole number in 0..%d", where,
                        key, TOK_MAX_ID - 1);
        int rc = names_add(&ld->tok->names, key, strlen(key), id);
        if (rc < 0)
            return out_of_memory(ld, where);
        if (rc > 0) /* jansson refused duplicate keys already; kept for safety */
            return fail(ld, "%s: token \"%s\" appears twice", where, key);
        if (id > ld->max_id)
            ld->max_id = id;
        ld->n_model++;
    }
    if (ld->n_model == 0)
        return fail(ld, "%s: the vocabulary is empty", where);
    return 0;
}

/* Makes kind[] for the model's ids; two tokens with one id are refused. */
static int mark_model_ids(loader_t *ld, const char *where)
{
    tokenizer_t *tok = ld->tok;
    ld->n_kinds = (size_t)ld->max_id + 1;
    tok->kind = calloc(ld->n_kinds, 1);
    if (tok->kind == NULL)
        return out_of_memory(ld, where);
    for (size_t e = 0; e < tok->names.n; e++) {
        const struct tok_name *n = &tok->names.entries[e];
        if (tok->kind[n->id] != TOK_ID_NONE)
            return fail(ld, "%s: id %d is given to two tokens (\"%.*s\" and another)", where,
                        (int)n->id, (int)n->len, tok->names.blob + n->off);
        tok->kind[n->id] = TOK_ID_MODEL;
    }
    return 0;
}

/* The id of each byte's symbol; a byte-level vocabulary has all 256. */
static int load_byte_ids(loader_t *ld, const char *where)
{
    for (int b = 0; b < 256; b++) {
        char sym[4];
        size_t n = tok_utf8_put(tok_byte_to_symbol((uint8_t)b), sym);
        int32_t id = tok_names_find(&ld->tok->names, sym, n);
        if (id < 0)
            return fail(ld, "%s: no token for byte 0x%02X (\"%.*s\"): not a byte-level BPE "
                            "vocabulary", where, b, (int)n, sym);
        ld->tok->byte_id[b] = id;
    }
    return 0;
}

/* ---- merges ---- */

/* Records merge `rank`: left + right. where names it in errors ("merges.txt:12"). */
static int add_merge(loader_t *ld, const char *left, size_t left_len, const char *right,
                     size_t right_len, uint32_t rank, const char *where, char **concat,
                     size_t *concat_cap)
{
    const tok_names_t *names = &ld->tok->names;
    int32_t a = tok_names_find(names, left, left_len);
    int32_t b = tok_names_find(names, right, right_len);
    if (a < 0 || b < 0) {
        const char *s = a < 0 ? left : right;
        size_t n = a < 0 ? left_len : right_len;
        return fail(ld, "%s: merge \"%.*s %.*s\": \"%.*s\" is not in the vocabulary", where,
                    (int)left_len, left, (int)right_len, right, (int)n, s);
    }
    if (left_len + right_len > *concat_cap) {
        size_t cap = (left_len + right_len) * 2;
        char *c = realloc(*concat, cap);
        if (c == NULL)
            return out_of_memory(ld, where);
        *concat = c;
        *concat_cap = cap;
    }
    memcpy(*concat, left, left_len);
    memcpy(*concat + left_len, right, right_len);
    int32_t ab = tok_names_find(names, *concat, left_len + right_len);
    if (ab < 0)
        return fail(ld, "%s: merge \"%.*s %.*s\": \"%.*s%.*s\" is not in the vocabulary", where,
                    (int)left_len, left, (int)right_len, right, (int)left_len, left,
                    (int)right_len, right);
    tok_merges_add(&ld->tok->merges, a, b, ab, rank);
    return 0;
}

static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *b = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
        if (b == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = b;
        cap *= 2;
    }
    int failed = ferror(f);
    fclose(f);
    if (buf == NULL || failed) {
        snprintf(err, errlen, "%s: %s", path, buf == NULL ? "out of memory" : "read error");
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* merges.txt: one merge per line, "left right", split at its one space; lines that begin
 * with "#version" are skipped; a line may end in \r\n. The rank is the line's place among
 * the merges. As in the reference, any other line (an empty one too) is an error. */
static int load_merges_txt(loader_t *ld, const char *path)
{
    size_t len;
    char *text = read_file(path, &len, ld->err, ld->errlen);
    if (text == NULL)
        return -1;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    if (lines >= TOK_MAX_MERGES) {
        free(text);
        return fail(ld, "%s: more than %u merges", path, TOK_MAX_MERGES);
    }
    int rc = tok_merges_init(&ld->tok->merges, lines + 1);
    if (rc != 0) {
        free(text);
        return out_of_memory(ld, path);
    }
    char *concat = NULL, where[4200];
    size_t concat_cap = 0;
    uint32_t rank = 0;
    size_t line_no = 0;
    for (size_t at = 0; at < len && rc == 0;) {
        char *line = text + at, *nl = memchr(line, '\n', len - at);
        size_t n = nl ? (size_t)(nl - line) : len - at;
        at += n + (nl != NULL);
        line_no++;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n >= 8 && memcmp(line, "#version", 8) == 0)
            continue;
        snprintf(where, sizeof where, "%s:%zu", path, line_no);
        char *space = memchr(line, ' ', n);
        if (space == NULL || memchr(space + 1, ' ', n - (size_t)(space - line) - 1) != NULL) {
            rc = fail(ld, "%s: expected two tokens separated by one space", where);
            break;
        }
        size_t left_len = (size_t)(space - line);
        rc = add_merge(ld, line, left_len, space + 1, n - left_len - 1, rank++, where, &concat,
                       &concat_cap);
    }
    free(concat);
    free(text);
    return rc;
}

/* tokenizer.json's model.merges: "left right" strings, or [left, right] pairs. */
static int load_merges_json(loader_t *ld, const json_t *merges, const char *path)
{
    if (!json_is_array(merges))
        return fail(ld, "%s: model.merges is not an array", path);
    size_t count = json_array_size(merges);
    if (count > TOK_MAX_MERGES)
        return fail(ld, "%s: more than %u merges", path, TOK_MAX_MERGES);
    if (tok_merges_init(&ld->tok->merges, count) != 0)
        return out_of_memory(ld, path);
    char *concat = NULL, where[4200];
    size_t concat_cap = 0;
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        const json_t *m = json_array_get(merges, i);
        snprintf(where, sizeof where, "%s: model.merges[%zu]", path, i);
        const char *left, *right;
        size_t left_len, right_len;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            size_t n = json_string_length(m);
            const char *space = memchr(s, ' ', n);
            if (space == NULL || memchr(space + 1, ' ', n - (size_t)(space - s) - 1) != NULL) {
                rc = fail(ld, "%s: expected two tokens separated by one space", where);
                break;
            }
            left = s;
            left_len = (size_t)(space - s);
            right = space + 1;
            right_len = n - left_len - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            left = json_string_value(json_array_get(m, 0));
            left_len = json_string_length(json_array_get(m, 0));
            right = json_string_value(json_array_get(m, 1));
            right_len = json_string_length(json_array_get(m, 1));
        } else {
            rc = fail(ld, "%s: expected \"left right\" or [\"left\", \"right\"]", where);
            break;
        }
        rc = add_merge(ld, left, left_len, right, right_len, (uint32_t)i, where, &concat,
                       &concat_cap);
    }
    free(concat);
    return rc;
}

/* ---- added tokens ---- */

/* An optional boolean member of obj; *out keeps its default when the member is absent. */
static int json_flag(loader_t *ld, const json_t *obj, const char *name, bool *out,
                     const char *where)
{
    const json_t *v = json_object_get(obj, name);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return fail(ld, "%s: \"%s\" is not true or false", where, name);
    *out = json_is_true(v);
    return 0;
}

/* One added token: {content, special, lstrip, rstrip, normalized, single_word} with its id.
 * As in the reference, normalized defaults to !special and an empty content is ignored. */
static int add_added_token(loader_t *ld, int32_t id, const json_t *obj, const char *where)
{
    tokenizer_t *tok = ld->tok;
    if (!json_is_object(obj))
        return fail(ld, "%s: not a JSON object", where);
    const json_t *content = json_object_get(obj, "content");
    if (!json_is_string(content))
        return fail(ld, "%s: \"content\" is missing or not a string", where);
    tok_added_t a = {.id = id};
    bool single_word = false;
    if (json_flag(ld, obj, "special", &a.special, where) != 0)
        return -1;
    a.normalized = !a.special;
    if (json_flag(ld, obj, "lstrip", &a.lstrip, where) != 0 ||
        json_flag(ld, obj, "rstrip", &a.rstrip, where) != 0 ||
        json_flag(ld, obj, "normalized", &a.normalized, where) != 0 ||
        json_flag(ld, obj, "single_word", &single_word, where) != 0)
        return -1;
    if (single_word)
        return fail(ld, "%s: single_word added tokens are not supported", where);
    /* From these files transformers builds its tokenizer and drops lstrip/rstrip of special
     * tokens, where tokenizers (tokenizer.json) honours them: the two references disagree, so
     * refuse rather than follow one of them silently (Qwen's files set neither). */
    if (ld->vocab_files && a.special && (a.lstrip || a.rstrip))
        return fail(ld, "%s: lstrip/rstrip on a special token: transformers ignores them for "
                    "tokenizer_config.json's tokens and tokenizers honours them; use "
                    "tokenizer.json", where);
    const char *s = json_string_value(content);
    size_t len = json_string_length(content);
    if (len == 0)
        return 0;
    if (memchr(s, '\0', len) != NULL)
        return fail(ld, "%s: the content holds a NUL character", where);
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id == id)
            return fail(ld, "%s: id %d is given to two added tokens", where, (int)id);
    /* The reference gives an added token that the vocabulary has the vocabulary's id. */
    int32_t known = tok_names_find(&tok->names, s, len);
    if (known >= 0 && known != id) {
        for (size_t i = 0; i < tok->n_added; i++)
            if (tok->added[i].id == known)
                return fail(ld, "%s: \"%s\" is added twice (ids %d and %d)", where, s,
                            (int)known, (int)id);
        return fail(ld, "%s: \"%s\" has id %d but the vocabulary gives it %d", where, s,
                    (int)id, (int)known);
    }
    /* an id that is a vocabulary token's would then mean two things (the reference gives
     * such a token a fresh id instead, with a warning): refuse */
    if (known < 0 && (size_t)id < ld->n_kinds && tok->kind && tok->kind[id] == TOK_ID_MODEL)
        return fail(ld, "%s: \"%s\" has id %d, which a vocabulary token already has", where, s,
                    (int)id);
    if (known < 0 && names_add(&tok->names, s, len, id) != 0)
        return out_of_memory(ld, where);
    a.content = strdup(s);
    if (a.content == NULL)
        return out_of_memory(ld, where);
    tok_added_t *grown = realloc(tok->added, (tok->n_added + 1) * sizeof *grown);
    if (grown == NULL) {
        free(a.content);
        return out_of_memory(ld, where);
    }
    tok->added = grown;
    tok->added[tok->n_added++] = a;
    if (id > ld->max_id)
        ld->max_id = id;
    return 0;
}

/* tokenizer.json's "added_tokens": [{"id": N, "content": ..., flags}, ...]. */
static int load_added_json(loader_t *ld, const json_t *list, const char *path)
{
    if (list == NULL || json_is_null(list))
        return 0;
    if (!json_is_array(list))
        return fail(ld, "%s: added_tokens is not an array", path);
    char where[4200];
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *obj = json_array_get(list, i);
        snprintf(where, sizeof where, "%s: added_tokens[%zu]", path, i);
        int32_t id;
        if (json_id(json_object_get(obj, "id"), &id) != 0)
            return fail(ld, "%s: \"id\" is not a whole number in 0..%d", where,
                        TOK_MAX_ID - 1);
        if (add_added_token(ld, id, obj, where) != 0)
            return -1;
    }
    return 0;
}

/* tokenizer_config.json's "added_tokens_decoder": {"ID": {"content": ..., flags}, ...}. */
static int load_added_config(loader_t *ld, const json_t *obj, const char *path)
{
    if (obj == NULL || json_is_null(obj))
        return 0;
    if (!json_is_object(obj))
        return fail(ld, "%s: added_tokens_decoder is not an object", path);
    char where[4200];
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        snprintf(where, sizeof where, "%s: added_tokens_decoder[\"%s\"]", path, key);
        char *end;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (key[0] < '0' || key[0] > '9' || *end != '\0' || errno != 0 || id >= TOK_MAX_ID)
            return fail(ld, "%s: the key is not an id in 0..%d", where, TOK_MAX_ID - 1);
        if (add_added_token(ld, (int32_t)id, value, where) != 0)
            return -1;
    }
    return 0;
}

/* Orders the added tokens of one pass (normalized or not) by first byte, longest first, so
 * that the first one that matches at a position is the longest there. */
static int added_order_cmp(const void *x, const void *y, void *arg)
{
    const tokenizer_t *tok = arg;
    const tok_added_t *a = &tok->added[*(const uint32_t *)x];
    const tok_added_t *b = &tok->added[*(const uint32_t *)y];
    uint8_t fa = (uint8_t)a->match[0], fb = (uint8_t)b->match[0];
    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (a->match_len != b->match_len)
        return a->match_len > b->match_len ? -1 : 1;
    return memcmp(a->match, b->match, a->match_len);
}

static int build_added_set(tokenizer_t *tok, tok_added_set_t *set, bool normalized)
{
    set->order = malloc((tok->n_added + 1) * sizeof *set->order);
    if (set->order == NULL)
        return -1;
    set->n = 0;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized)
            set->order[set->n++] = (uint32_t)i;
    qsort_r(set->order, set->n, sizeof *set->order, added_order_cmp, tok);
    size_t k = 0;
    for (int b = 0; b <= 256; b++) {
        while (b < 256 && k < set->n && (uint8_t)tok->added[set->order[k]].match[0] < b)
            k++;
        set->first[b] = (uint32_t)(b == 256 ? set->n : k);
    }
    return 0;
}

/* ---- the pieces that end a load ---- */

/* What each id decodes to. Like the reference's byte-level decoder, a token whose characters
 * all are byte symbols gives those bytes, any other token its own UTF-8; added tokens go the
 * same way (their ASCII contents give themselves). */
static int build_decode_table(loader_t *ld)
{
    tokenizer_t *tok = ld->tok;
    const char **text = calloc(tok->vocab_size, sizeof *text);
    uint32_t *text_len = calloc(tok->vocab_size, sizeof *text_len);
    tok->bytes_off = malloc((tok->vocab_size + 1) * sizeof *tok->bytes_off);
    size_t total = 0;
    if (text == NULL || text_len == NULL || tok->bytes_off == NULL)
        goto oom;
    for (size_t e = 0; e < tok->names.n; e++) {
        const struct tok_name *n = &tok->names.entries[e];
        if (tok->kind[n->id] == TOK_ID_MODEL) {
            text[n->id] = tok->names.blob + n->off;
            text_len[n->id] = n->len;
        }
    }
    for (size_t i = 0; i < tok->n_added; i++) { /* the reference looks up added ids first */
        text[tok->added[i].id] = tok->added[i].content;
        text_len[tok->added[i].id] = (uint32_t)strlen(tok->added[i].content);
    }
    for (size_t id = 0; id < tok->vocab_size; id++)
        total += text_len[id];
    tok->bytes = malloc(total + 1);
    if (tok->bytes == NULL)
        goto oom;
    size_t at = 0;
    for (size_t id = 0; id < tok->vocab_size; id++) {
        tok->bytes_off[id] = (uint32_t)at;
        const char *s = text[id], *end = s + text_len[id];
        size_t start = at;
        for (const char *p = s; p < end;) {
            uint32_t cp;
            p += tok_utf8_next(p, end, &cp);
            int b = tok_symbol_to_byte(cp);
            if (b < 0) { /* not all byte symbols: the token's own text */
                at = start;
                memcpy(tok->bytes + at, s, text_len[id]);
                at += text_len[id];
                break;
            }
            tok->bytes[at++] = (char)b;
        }
    }
    tok->bytes_off[tok->vocab_size] = (uint32_t)at;
    free(text);
    free(text_len);
    return 0;
oom:
    free(text);
    free(text_len);
    return fail(ld, "tokenizer: out of memory");
}

/* After the vocabulary, merges and added tokens are in: the per-id tables, the added-token
 * search, the split pattern. */
static int finish(loader_t *ld, const char *where)
{
    tokenizer_t *tok = ld->tok;
    tok->vocab_size = (size_t)ld->max_id + 1;
    if (tok->vocab_size > ld->n_kinds) { /* added tokens past the model's ids */
        uint8_t *kind = realloc(tok->kind, tok->vocab_size);
        if (kind == NULL)
            return out_of_memory(ld, where);
        memset(kind + ld->n_kinds, TOK_ID_NONE, tok->vocab_size - ld->n_kinds);
        tok->kind = kind;
        ld->n_kinds = tok->vocab_size;
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        tok_added_t *a = &tok->added[i];
        tok->kind[a->id] = a->special ? TOK_ID_SPECIAL : TOK_ID_ADDED;
        if (a->normalized && tok->nfc) {
            /* the reference searches for normalized tokens by their normalized form */
            tok_bytes_t b = {0};
            tok_nfc_scratch_t sc = {0};
            int rc = tok_nfc_append(&b, a->content, strlen(a->content), &sc);
            tok_nfc_scratch_free(&sc);
            if (rc != 0 || tok_bytes_append(&b, "", 1) != 0) {
                free(b.p);
                return out_of_memory(ld, where);
            }
            a->match = b.p;
            a->match_len = b.len - 1;
        } else {
            a->match = strdup(a->content);
            if (a->match == NULL)
                return out_of_memory(ld, where);
            a->match_len = strlen(a->content);
        }
    }
    if (build_added_set(tok, &tok->raw_set, false) != 0 ||
        build_added_set(tok, &tok->norm_set, true) != 0 || build_decode_table(ld) != 0)
        return out_of_memory(ld, where);
    tok->split = tok_split_compile(&tok->jit, ld->err, ld->errlen);
    return tok->split == NULL ? -1 : 0;
}

/* ---- vocab.json + merges.txt + tokenizer_config.json ---- */

static int check_config(loader_t *ld, const json_t *config, const char *path)
{
    const json_t *cls = json_object_get(config, "tokenizer_class");
    if (cls != NULL && !json_is_null(cls)) {
        const char *name = json_is_string(cls) ? json_string_value(cls) : "";
        if (strcmp(name, "Qwen2Tokenizer") != 0 && strcmp(name, "Qwen2TokenizerFast") != 0)
            return fail(ld, "%s: tokenizer_class \"%s\" is not supported (Qwen2Tokenizer is)",
                        path, name);
    }
    /* Options that would change the ids; Qwen2's files set them all false. */
    static const char *const off[] = {"add_prefix_space", "add_bos_token", "add_eos_token",
                                      "split_special_tokens"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        bool on = false;
        if (json_flag(ld, config, off[i], &on, path) != 0)
            return -1;
        if (on)
            return fail(ld, "%s: %s true is not supported", path, off[i]);
    }
    return 0;
}

static int load_vocab_files(loader_t *ld, const char *dir)
{
    char vocab_path[4096], merges_path[4096], config_path[4096];
    join_path(vocab_path, sizeof vocab_path, dir, "vocab.json");
    join_path(merges_path, sizeof merges_path, dir, "merges.txt");
    join_path(config_path, sizeof config_path, dir, "tokenizer_config.json");
    json_t *vocab = load_object(vocab_path, ld->err, ld->errlen);
    if (vocab == NULL)
        return -1;
    int rc = load_vocab(ld, vocab, vocab_path);
    json_decref(vocab);
    if (rc != 0 || mark_model_ids(ld, vocab_path) != 0 || load_byte_ids(ld, vocab_path) != 0 ||
        load_merges_txt(ld, merges_path) != 0)
        return -1;
    json_t *config = load_object(config_path, ld->err, ld->errlen);
    if (config == NULL)
        return -1;
    rc = check_config(ld, config, config_path);
    if (rc == 0)
        rc = load_added_config(ld, json_object_get(config, "added_tokens_decoder"), config_path);
    json_decref(config);
    ld->tok->nfc = true; /* Qwen2Tokenizer's normalizer */
    return rc != 0 ? -1 : finish(ld, config_path);
}

/* ---- tokenizer.json ---- */

static bool json_str_is(const json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

static bool json_false_or_absent(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);
    return v == NULL || json_is_null(v) || json_is_false(v);
}

static bool json_empty_or_absent(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);
    return v == NULL || json_is_null(v) || json_str_is(v, "");
}

/* Split(Qwen2 pattern, Isolated) then ByteLevel without its own regex or prefix space. */
static bool is_qwen2_pre_tokenizer(const json_t *pt)
{
    const json_t *list = json_object_get(pt, "pretokenizers");
    if (!json_str_is(json_object_get(pt, "type"), "Sequence") || !json_is_array(list) ||
        json_array_size(list) != 2)
        return false;
    const json_t *split = json_array_get(list, 0), *bl = json_array_get(list, 1);
    return json_str_is(json_object_get(split, "type"), "Split") &&
           json_str_is(json_object_get(json_object_get(split, "pattern"), "Regex"),
                       tok_qwen2_pattern) &&
           json_str_is(json_object_get(split, "behavior"), "Isolated") &&
           json_false_or_absent(split, "invert") &&
           json_str_is(json_object_get(bl, "type"), "ByteLevel") &&
           json_false_or_absent(bl, "add_prefix_space") && json_false_or_absent(bl, "use_regex");
}

static int check_tokenizer_json(loader_t *ld, const json_t *root, const char *path)
{
    const json_t *norm = json_object_get(root, "normalizer");
    if (json_str_is(json_object_get(norm, "type"), "NFC"))
        ld->tok->nfc = true;
    else if (norm != NULL && !json_is_null(norm))
        return fail(ld, "%s: normalizer: only NFC (or none) is supported", path);
    if (!is_qwen2_pre_tokenizer(json_object_get(root, "pre_tokenizer")))
        return fail(ld, "%s: pre_tokenizer: only Qwen2's (Split on its pattern, Isolated, then "
                        "ByteLevel without regex or prefix space) is supported", path);
    const json_t *model = json_object_get(root, "model");
    if (!json_str_is(json_object_get(model, "type"), "BPE"))
        return fail(ld, "%s: model: only BPE is supported", path);
    static const char *const off[] = {"dropout", "byte_fallback", "ignore_merges"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++)
        if (!json_false_or_absent(model, off[i]))
            return fail(ld, "%s: model.%s is not supported", path, off[i]);
    static const char *const empty[] = {"unk_token", "continuing_subword_prefix",
                                        "end_of_word_suffix"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++)
        if (!json_empty_or_absent(model, empty[i]))
            return fail(ld, "%s: model.%s is not supported", path, empty[i]);
    if (!json_str_is(json_object_get(json_object_get(root, "decoder"), "type"), "ByteLevel"))
        return fail(ld, "%s: decoder: only ByteLevel is supported", path);
    const json_t *post = json_object_get(root, "post_processor");
    if (post != NULL && !json_is_null(post) &&
        !json_str_is(json_object_get(post, "type"), "ByteLevel"))
        return fail(ld, "%s: post_processor: only ByteLevel (or none) is supported", path);
    static const char *const absent[] = {"truncation", "padding"};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++) {
        const json_t *v = json_object_get(root, absent[i]);
        if (v != NULL && !json_is_null(v))
            return fail(ld, "%s: %s is not supported", path, absent[i]);
    }
    return 0;
}

static int load_json_file(loader_t *ld, const char *dir)
{
    char path[4096];
    join_path(path, sizeof path, dir, "tokenizer.json");
    json_t *root = load_object(path, ld->err, ld->errlen);
    if (root == NULL)
        return -1;
    const json_t *model = json_object_get(root, "model");
    int rc = check_tokenizer_json(ld, root, path);
    if (rc == 0) {
        char where[4200];
        snprintf(where, sizeof where, "%s: model.vocab", path);
        rc = load_vocab(ld, json_object_get(model, "vocab"), where);
        if (rc == 0)
            rc = mark_model_ids(ld, where);
        if (rc == 0)
            rc = load_byte_ids(ld, where);
    }
    if (rc == 0)
        rc = load_merges_json(ld, json_object_get(model, "merges"), path);
    if (rc == 0)
        rc = load_added_json(ld, json_object_get(root, "added_tokens"), path);
    json_decref(root);
    return rc != 0 ? -1 : finish(ld, path);
}

/* ---- the API ---- */

tokenizer_t *tokenizer_load_files(const char *dir, tokenizer_files_t files, char *err,
                                  size_t errlen)
{
    char vocab[4096], merges[4096], json[4096];
    join_path(vocab, sizeof vocab, dir, "vocab.json");
    join_path(merges, sizeof merges, dir, "merges.txt");
    join_path(json, sizeof json, dir, "tokenizer.json");
    if (files == TOKENIZER_FILES_AUTO) {
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            snprintf(err, errlen, "%s: %s", dir,
                     stat(dir, &sb) != 0 ? strerror(errno) : "not a folder");
            return NULL;
        }
        if (is_file(vocab) && is_file(merges))
            files = TOKENIZER_FILES_VOCAB;
        else if (is_file(json))
            files = TOKENIZER_FILES_JSON;
        else {
            snprintf(err, errlen, "%s: no tokenizer: neither vocab.json and merges.txt nor "
                                  "tokenizer.json", dir);
            return NULL;
        }
    }
    tokenizer_t *tok = calloc(1, sizeof *tok);
    if (tok == NULL) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return NULL;
    }
    tok->files = files;
    loader_t ld = {.tok = tok, .err = err, .errlen = errlen, .max_id = -1,
                   .vocab_files = files == TOKENIZER_FILES_VOCAB};
    int rc = files == TOKENIZER_FILES_VOCAB ? load_vocab_files(&ld, dir)
                                            : load_json_file(&ld, dir);
    if (rc != 0) {
        tokenizer_free(&tok);
        return NULL;
    }
    return tok;
}

tokenizer_t *tokenizer_load(const char *dir, char *err, size_t errlen)
{
    return tokenizer_load_files(dir, TOKENIZER_FILES_AUTO, err, errlen);
}

void tokenizer_free(tokenizer_t **tokp)
{
    if (tokp == NULL || *tokp == NULL)
        return;
    tokenizer_t *tok = *tokp;
    free(tok->kind);
    free(tok->bytes_off);
    free(tok->bytes);
    names_free(&tok->names);
    tok_merges_free(&tok->merges);
    for (size_t i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].match);
    }
    free(tok->added);
    free(tok->raw_set.order);
    free(tok->norm_set.order);
    pcre2_code_free(tok->split);
    free(tok);
    *tokp = NULL;
}
