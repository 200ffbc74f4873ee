/* diffusiond-tokenize: the Qwen2 tokenizer on the command line, one JSON value per line, for
 * scripts, tests and comparisons with the reference: text in, ids out, or back with
 * --decode. */
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"

static void usage(FILE *out)
{
    fprintf(out,
        "usage: diffusiond-tokenize [options] TOKENIZER_DIR\n"
        "  Reads standard input line by line. Each line is a JSON string; each output line is\n"
        "  the JSON array of its ids (no BOS or EOS is added; \"\" gives []).\n"
        "  TOKENIZER_DIR is a model folder's tokenizer/: vocab.json, merges.txt and\n"
        "  tokenizer_config.json, or tokenizer.json.\n"
        "  --decode        the other way: each line a JSON array of ids, each output line the\n"
        "                  JSON string they decode to (bytes that are not UTF-8 become U+FFFD)\n"
        "  --skip-special  with --decode: leave out the special added tokens (<|im_start|>, ...)\n"
        "  --files WHICH   auto (default: vocab.json and merges.txt when both are there, else\n"
        "                  tokenizer.json), vocab, or json\n"
        "  -h, --help      this text\n"
        "  A bad line (not JSON, not a string or array of ids, text that is not UTF-8, an id\n"
        "  outside the vocabulary) stops the run: the lines before it have been written, the\n"
        "  line is named on standard error (\"stdin:3: ...\") and the exit status is 1.\n"
        "  Exit status: 0 every line done, 1 a bad line or tokenizer folder, 2 bad arguments.\n");
}

typedef struct {
    const char *dir;
    bool decode, skip_special;
    tokenizer_files_t files;
} args_t;

static int parse_args(int argc, char **argv, args_t *a)
{
    static const struct option opts[] = {
        {"decode", no_argument, NULL, 'd'},
        {"skip-special", no_argument, NULL, 's'},
        {"files", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': a->decode = true; break;
        case 's': a->skip_special = true; break;
        case 'f':
            if (strcmp(optarg, "auto") == 0)
                a->files = TOKENIZER_FILES_AUTO;
            else if (strcmp(optarg, "vocab") == 0)
                a->files = TOKENIZER_FILES_VOCAB;
            else if (strcmp(optarg, "json") == 0)
                a->files = TOKENIZER_FILES_JSON;
            else {
                fprintf(stderr, "diffusiond-tokenize: --files wants auto, vocab or json, not "
                                "'%s'\n", optarg);
                return -1;
            }
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "diffusiond-tokenize: expected one TOKENIZER_DIR\n");
        usage(stderr);
        return -1;
    }
    if (a->skip_special && !a->decode) {
        fprintf(stderr, "diffusiond-tokenize: --skip-special goes with --decode\n");
        return -1;
    }
    a->dir = argv[optind];
    return 0;
}

/* Writes ids as a JSON array and a newline. */
static void print_ids(const int32_t *ids, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", (int)ids[i]);
    fputs("]\n", stdout);
}

/* One line of encode mode. Returns 0, or -1 with the reason in err. */
static int encode_line(const tokenizer_t *tok, const json_t *v, char *err, size_t errlen)
{
    if (!json_is_string(v)) {
        snprintf(err, errlen, "expected a JSON string");
        return -1;
    }
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(tok, json_string_value(v), json_string_length(v), &ids, &n, err,
                         errlen) != 0)
        return -1;
    print_ids(ids, n);
    free(ids);
    return 0;
}

/* One line of decode mode. */
static int decode_line(const tokenizer_t *tok, const json_t *v, unsigned flags, char *err,
                       size_t errlen)
{
    if (!json_is_array(v)) {
        snprintf(err, errlen, "expected a JSON array of ids");
        return -1;
    }
    size_t n = json_array_size(v);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (ids == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_integer(x) || json_integer_value(x) < INT32_MIN ||
            json_integer_value(x) > INT32_MAX) {
            snprintf(err, errlen, "element %zu is not a whole number", i);
            free(ids);
            return -1;
        }
        ids[i] = (int32_t)json_integer_value(x);
    }
    char *text;
    size_t len;
    int rc = tokenizer_decode(tok, ids, n, flags, &text, &len, err, errlen);
    free(ids);
    if (rc != 0)
        return -1;
    json_t *s = json_stringn(text, len); /* valid UTF-8: decode guarantees it */
    char *out = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    json_decref(s);
    free(text);
    if (out == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    puts(out);
    free(out);
    return 0;
}

int main(int argc, char **argv)
{
    args_t a = {.files = TOKENIZER_FILES_AUTO};
    if (parse_args(argc, argv, &a) != 0)
        return 2;
    char err[1024];
    tokenizer_t *tok = tokenizer_load_files(a.dir, a.files, err, sizeof err);
    if (tok == NULL) {
        fprintf(stderr, "diffusiond-tokenize: %s\n", err);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0, line_no = 0;
    ssize_t got;
    int status = 0;
    while ((got = getline(&line, &cap, stdin)) != -1) {
        line_no++;
        size_t len = (size_t)got;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        json_error_t jerr;
        json_t *v = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        int rc;
        if (v == NULL) {
            snprintf(err, sizeof err, "not JSON: %s", jerr.text);
            rc = -1;
        } else {
            rc = a.decode ? decode_line(tok, v, a.skip_special ? TOKENIZER_DECODE_SKIP_SPECIAL
                                                               : 0, err, sizeof err)
                          : encode_line(tok, v, err, sizeof err);
            json_decref(v);
        }
        if (rc != 0) {
            fflush(stdout);
            fprintf(stderr, "diffusiond-tokenize: stdin:%zu: %s\n", line_no, err);
            status = 1;
            break;
        }
        /* A line at a time, so that a program that writes one line and waits for the
         * answer (a coprocess) gets it. */
        fflush(stdout);
    }
    free(line);
    tokenizer_free(&tok);
    if (status == 0 && (ferror(stdout) || fflush(stdout) != 0)) {
        fprintf(stderr, "diffusiond-tokenize: writing the output failed\n");
        status = 1;
    }
    return status;
}
