/* tokenizer_bpe: byte-pair encoding of one piece: start from the piece's byte symbols and
 * apply the lowest-ranked merge among adjacent pairs, the leftmost on a tie, until no pair
 * has a merge. This is the order of the reference's Word::merge_all (a heap of (rank,
 * position)), done here with a plain scan for short words and with a heap for long ones. */
#include "text/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- the merge table ---- */

/* A pair's key: both ids in 40 bits (TOK_ID_BITS each). */
static uint64_t pair_key(int32_t left, int32_t right)
{
    return (uint64_t)(uint32_t)left << TOK_ID_BITS | (uint32_t)right;
}

/* Fibonacci hashing: the top bits of key * 2^64/phi spread consecutive ids well. */
static size_t pair_slot(const tok_merges_t *m, uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15u) >> 32) & m->mask;
}

int tok_merges_init(tok_merges_t *m, size_t n_ranks)
{
    memset(m, 0, sizeof *m);
    if (n_ranks > TOK_MAX_MERGES)
        return -1;
    size_t cap = 16;
    while (cap < n_ranks + n_ranks / 2) /* load at most 2/3: short probe runs */
        cap *= 2;
    m->slots = malloc(cap * sizeof *m->slots);
    m->merged = malloc((n_ranks ? n_ranks : 1) * sizeof *m->merged);
    if (m->slots == NULL || m->merged == NULL) {
        tok_merges_free(m);
        return -1;
    }
    for (size_t i = 0; i < cap; i++)
        m->slots[i] = TOK_NO_PAIR;
    m->mask = cap - 1;
    m->n_ranks = n_ranks;
    return 0;
}

void tok_merges_add(tok_merges_t *m, int32_t left, int32_t right, int32_t merged,
                    uint32_t rank)
{
    uint64_t key = pair_key(left, right);
    size_t i = pair_slot(m, key);
    while (m->slots[i] != TOK_NO_PAIR && m->slots[i] >> TOK_RANK_BITS != key)
        i = (i + 1) & m->mask;
    m->slots[i] = key << TOK_RANK_BITS | rank;
    m->merged[rank] = merged;
}

void tok_merges_free(tok_merges_t *m)
{
    free(m->slots);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

static uint32_t merge_rank(const tok_merges_t *m, int32_t left, int32_t right)
{
    uint64_t key = pair_key(left, right);
    for (size_t i = pair_slot(m, key);; i = (i + 1) & m->mask) {
        uint64_t e = m->slots[i];
        if (e >> TOK_RANK_BITS == key)
            return (uint32_t)(e & ((1u << TOK_RANK_BITS) - 1));
        if (e == TOK_NO_PAIR)
            return TOK_NO_RANK;
    }
}

/* ---- short words: scan for the lowest rank ---- */

/* Merges sym[0..n) in place; returns the number of symbols left. rank[i] is the rank of the
 * pair (sym[i], sym[i + 1]). */
static size_t bpe_short(const tok_merges_t *m, int32_t *sym, uint32_t *rank, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        rank[i] = merge_rank(m, sym[i], sym[i + 1]);
    while (n > 1) {
        uint32_t best = TOK_NO_RANK;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (rank[i] < best) { /* strict: the leftmost of equal ranks wins */
                best = rank[i];
                at = i;
            }
        if (best == TOK_NO_RANK)
            break;
        sym[at] = m->merged[best];
        /* drop sym[at + 1]; the pairs after it move down one place */
        memmove(sym + at + 1, sym + at + 2, (n - at - 2) * sizeof *sym);
        n--;
        if (n >= at + 3)
            memmove(rank + at + 1, rank + at + 2, (n - at - 2) * sizeof *rank);
        if (at > 0)
            rank[at - 1] = merge_rank(m, sym[at - 1], sym[at]);
        if (at + 1 < n)
            rank[at] = merge_rank(m, sym[at], sym[at + 1]);
    }
    return n;
}

/* ---- long words: a heap of (rank, position) ---- */

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h[parent] <= v)
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], last = h[--*n];
    size_t i = 0, count = *n;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= count)
            break;
        if (child + 1 < count && h[child + 1] < h[child])
            child++;
        if (last <= h[child])
            break;
        h[i] = h[child];
        i = child;
    }
    if (count > 0)
        h[i] = last;
    return top;
}

/* Pushes the pair that starts at symbol i, if it has a merge. The entry orders by rank, then
 * by position: positions are the symbols' original indices, which keep the word's order. */
static void push_pair(const tok_merges_t *m, const int32_t *sym, const int32_t *next, size_t i,
                      uint64_t *heap, size_t *hn)
{
    if (next[i] < 0)
        return;
    uint32_t r = merge_rank(m, sym[i], sym[next[i]]);
    if (r != TOK_NO_RANK)
        heap_push(heap, hn, (uint64_t)r << 32 | (uint32_t)i);
}

/* Merges sym[0..n) as bpe_short does; returns the number of symbols left, moved to the front
 * of sym. A merged-away symbol is marked -1; the left one of a pair always survives, so
 * sym[0] is never removed. */
static size_t bpe_long(const tok_merges_t *m, tok_bpe_scratch_t *s, size_t n)
{
    int32_t *sym = s->sym, *prev = s->prev, *next = s->next;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(m, sym, next, i, s->heap, &hn);
    while (hn > 0) {
        uint64_t top = heap_pop(s->heap, &hn);
        uint32_t r = (uint32_t)(top >> 32);
        size_t i = (uint32_t)top;
        if (sym[i] < 0 || next[i] < 0)
            continue; /* merged away, or now the last symbol */
        size_t j = (size_t)next[i];
        if (merge_rank(m, sym[i], sym[j]) != r)
            continue; /* the pair at i changed since this entry was pushed */
        sym[i] = m->merged[r];
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0)
            prev[next[j]] = (int32_t)i;
        if (prev[i] >= 0)
            push_pair(m, sym, next, (size_t)prev[i], s->heap, &hn);
        push_pair(m, sym, next, i, s->heap, &hn);
    }
    size_t k = 0;
    for (int32_t i = 0; i >= 0; i = next[i])
        sym[k++] = sym[i];
    return k;
}

/* ---- one piece ---- */

static int scratch_reserve(tok_bpe_scratch_t *s, size_t n, bool heap_path)
{
    if (n <= s->cap && (!heap_path || s->heap != NULL))
        return 0;
    size_t cap = n > s->cap ? n + n / 2 : s->cap;
    int32_t *sym = realloc(s->sym, cap * sizeof *sym);
    if (sym != NULL)
        s->sym = sym;
    uint32_t *rank = realloc(s->rank, cap * sizeof *rank);
    if (rank != NULL)
        s->rank = rank;
    if (sym == NULL || rank == NULL)
        return -1;
    if (heap_path || s->heap != NULL) {
        int32_t *prev = realloc(s->prev, cap * sizeof *prev);
        if (prev != NULL)
            s->prev = prev;
        int32_t *next = realloc(s->next, cap * sizeof *next);
        if (next != NULL)
            s->next = next;
        /* each merge pushes at most two entries: 3n bounds the heap */
        uint64_t *heap = realloc(s->heap, 3 * cap * sizeof *heap);
        if (heap != NULL)
            s->heap = heap;
        if (prev == NULL || next == NULL || heap == NULL)
            return -1;
    }
    s->cap = cap;
    return 0;
}

int tok_bpe_append(const tok_merges_t *m, const int32_t byte_id[256], const uint8_t *piece,
                   size_t len, bool long_path, tok_bpe_scratch_t *s, tok_ids_t *out)
{
    bool heap_path = long_path || len > TOK_BPE_SHORT;
    if (len > INT32_MAX || scratch_reserve(s, len, heap_path) != 0)
        return -1;
    for (size_t i = 0; i < len; i++)
        s->sym[i] = byte_id[piece[i]];
    size_t n = heap_path ? bpe_long(m, s, len) : bpe_short(m, s->sym, s->rank, len);
    if (tok_ids_reserve(out, n) != 0)
        return -1;
    memcpy(out->p + out->len, s->sym, n * sizeof *s->sym);
    out->len += n;
    return 0;
}

void tok_bpe_scratch_free(tok_bpe_scratch_t *s)
{
    free(s->sym);
    free(s->rank);
    free(s->prev);
    free(s->next);
    free(s->heap);
    memset(s, 0, sizeof *s);
}
