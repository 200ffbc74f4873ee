/* bench_tokenizer: encoding speed of the Qwen2 tokenizer, one thread, on the texts of
 * tests/golden/tokenizer/corpus.json (many languages, code, emoji, the prompt template, and
 * long words and runs of spaces).
 *
 * Each round encodes every text once; the figure is the median round, as tokens per second
 * and input MB per second. tools/bench/bench_tokenizer.py runs this next to Hugging Face
 * tokenizers on the same texts and prints the ratio.
 *
 *   bench_tokenizer [TOKENIZER_DIR [ROUNDS]]
 *   (default: ../shared/data/qwen2-tokenizer when it is there, else the small fixture; 9) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "text/tokenizer.h"
#include "tools/bench/bench_util.h"

#define CORPUS "tests/golden/tokenizer/corpus.json"
#define REAL "../shared/data/qwen2-tokenizer"
#define SMALL "tests/fixtures/qwen2-tokenizer-small"
#define MAX_ROUNDS 99

int main(int argc, char **argv)
{
    struct stat sb;
    const char *dir = argc > 1 ? argv[1] : stat(REAL "/vocab.json", &sb) == 0 ? REAL : SMALL;
    int rounds = argc > 2 ? atoi(argv[2]) : 9;
    if (rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench_tokenizer: ROUNDS is 1..%d\n", MAX_ROUNDS);
        return 2;
    }
    char err[1024];
    tokenizer_t *tok = tokenizer_load(dir, err, sizeof err);
    if (tok == NULL) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return 1;
    }
    json_error_t jerr;
    json_t *corpus = json_load_file(CORPUS, JSON_ALLOW_NUL, &jerr);
    const json_t *cases = json_object_get(corpus, "cases");
    if (!json_is_array(cases)) {
        fprintf(stderr, "bench_tokenizer: %s: %s (run from the repository root)\n", CORPUS,
                corpus ? "no cases" : jerr.text);
        return 1;
    }
    size_t n_texts = json_array_size(cases), bytes = 0, tokens = 0;
    for (size_t i = 0; i < n_texts; i++)
        bytes += json_string_length(json_object_get(json_array_get(cases, i), "text"));

    double secs[MAX_ROUNDS];
    for (int r = -1; r < rounds; r++) { /* round -1 warms caches and the allocator */
        size_t round_tokens = 0;
        double t0 = bench_now_s();
        for (size_t i = 0; i < n_texts; i++) {
            const json_t *t = json_object_get(json_array_get(cases, i), "text");
            int32_t *ids;
            size_t n;
            if (tokenizer_encode(tok, json_string_value(t), json_string_length(t), &ids, &n, err,
                                 sizeof err) != 0) {
                fprintf(stderr, "bench_tokenizer: %s\n", err);
                return 1;
            }
            round_tokens += n;
            free(ids);
        }
        if (r >= 0)
            secs[r] = bench_now_s() - t0;
        tokens = round_tokens;
    }
    double med = bench_median(secs, rounds);
    printf("diffusiond tokenizer (%s): %zu texts, %zu bytes, %zu tokens per round\n", dir,
           n_texts, bytes, tokens);
    printf("tokens/s: %.0f  MB/s: %.2f  (median of %d rounds, %.2f ms each, 1 thread)\n",
           (double)tokens / med, (double)bytes / med / 1e6, rounds, med * 1e3);
    json_decref(corpus);
    tokenizer_free(&tok);
    return 0;
}
