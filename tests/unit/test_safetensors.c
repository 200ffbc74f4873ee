/* test_safetensors: the safetensors reader and writer on files the test writes itself into a
 * temporary folder: round trips, sharded checkpoints, folder resolution, every kind of
 * corrupt header (hand-built bytes), and the messages for missing and misshaped tensors.
 * Also reads the committed tiny DiT checkpoint when it is there. Run from the repository
 * root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/safetensors.h"
#include "nn/tensor.h"

#define GOLDEN_DIT "tests/golden/dit_tiny/transformer/diffusion_pytorch_model.safetensors"

static char tmp_dir[64];
static char err[1024];

static void assert_contains(const char *text, const char *want)
{
    if (strstr(text, want) == NULL)
        fail_msg("expected \"%s\" in \"%s\"", want, text);
}

static const char *tmp_path(const char *name)
{
    static char paths[4][256];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof paths[0], "%s/%s", tmp_dir, name);
    return p;
}

/* Empties a folder of the test's files (one level: the test makes subfolders of files). */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int setup_dir(void **state)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_safetensors.XXXXXX");
    return mkdtemp(tmp_dir) == NULL ? -1 : 0;
}

static int teardown_dir(void **state)
{
    remove_tree(tmp_dir);
    return 0;
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* JSON written with ' for " (to keep the tests readable) into real JSON. */
static char *json_of(const char *text)
{
    char *json = malloc(strlen(text) + 1);
    assert_non_null(json);
    size_t i = 0;
    for (; text[i] != '\0'; i++)
        json[i] = text[i] == '\'' ? '"' : text[i];
    json[i] = '\0';
    return json;
}

/* A file image: the 8-byte length of header, the header (' for "), then data_len bytes 0, 1,
 * 2, ... */
static uint8_t *make_file(const char *header, size_t data_len, size_t *len)
{
    size_t hlen = strlen(header);
    *len = 8 + hlen + data_len;
    uint8_t *buf = malloc(*len + 1);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    char *json = json_of(header);
    memcpy(buf + 8, json, hlen);
    free(json);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + hlen + i] = (uint8_t)i;
    return buf;
}

/* check_header must refuse the header, with a message holding `want`. */
static void check_bad(const char *header, size_t data_len, const char *want)
{
    size_t len, count = 12345;
    uint8_t *buf = make_file(header, data_len, &len);
    err[0] = '\0';
    if (safetensors_check_header(buf, len, &count, err, sizeof err) != -1)
        fail_msg("accepted: %s", header);
    free(buf);
    assert_int_equal(count, 12345); /* untouched on failure */
    assert_contains(err, want);
}

static size_t check_good(const char *header, size_t data_len)
{
    size_t len, count = 0;
    uint8_t *buf = make_file(header, data_len, &len);
    if (safetensors_check_header(buf, len, &count, err, sizeof err) != 0)
        fail_msg("refused: %s\n%s", header, err);
    free(buf);
    return count;
}

static safetensors_t *open_ok(const char *path)
{
    safetensors_t *st = safetensors_open(path, err, sizeof err);
    if (st == NULL)
        fail_msg("%s: %s", path, err);
    return st;
}

/* Opening must fail with a message holding every `want`. */
static void open_bad(const char *path, const char *want1, const char *want2)
{
    err[0] = '\0';
    safetensors_t *st = safetensors_open(path, err, sizeof err);
    if (st != NULL) {
        safetensors_close(&st);
        fail_msg("%s: opened although it should not", path);
    }
    assert_contains(err, want1);
    if (want2 != NULL)
        assert_contains(err, want2);
}

/* Writes one f32 tensor of the given values. */
static void write_f32(const char *path, const char *name, int ndim, const int64_t *shape,
                      const float *values)
{
    int64_t shapes[1][NN_MAX_DIMS] = {{0}};
    memcpy(shapes[0], shape, (size_t)ndim * sizeof *shape);
    const char *names[1] = {name};
    nn_dtype_t dtypes[1] = {NN_DTYPE_F32};
    int ndims[1] = {ndim};
    const void *datas[1] = {values};
    if (safetensors_write(path, 1, names, dtypes, ndims, (const int64_t (*)[NN_MAX_DIMS])shapes,
                          datas, err, sizeof err) != 0)
        fail_msg("%s", err);
}

/* Every dtype, a scalar and an empty tensor, written and read back. */
static void test_round_trip(void **state)
{
    float f32[6] = {1.5f, -2.25f, 0.0f, 1e-30f, 3.0e38f, -0.0f};
    uint16_t bf16[20], f16[3] = {0x3c00, 0x7bff, 0x0001};
    for (int i = 0; i < 20; i++)
        bf16[i] = nn_f32_to_bf16((float)(i - 10) * 0.375f);
    uint8_t f8[4] = {0x38, 0x7e, 0x01, 0xc0};
    uint8_t u8[3] = {1, 2, 255};
    int32_t i32[2] = {-7, 1 << 30};
    int64_t i64[1] = {-(1LL << 40)};
    float scalar = 42.0f;

    const char *names[] = {"w.f32", "w.bf16", "w.f16", "w.f8", "ids.u8", "ids.i32",
                           "ids.i64", "scale", "empty"};
    nn_dtype_t dtypes[] = {NN_DTYPE_F32, NN_DTYPE_BF16, NN_DTYPE_F16, NN_DTYPE_F8E4M3,
                           NN_DTYPE_U8,  NN_DTYPE_I32,  NN_DTYPE_I64, NN_DTYPE_F32,
                           NN_DTYPE_BF16};
    int ndims[] = {2, 2, 1, 2, 1, 1, 1, 0, 2};
    const int64_t shapes[][NN_MAX_DIMS] = {{2, 3}, {4, 5}, {3}, {2, 2}, {3}, {2}, {1}, {0}, {0, 4}};
    const void *datas[] = {f32, bf16, f16, f8, u8, i32, i64, &scalar, NULL};
    size_t n = sizeof names / sizeof names[0];
    const char *path = tmp_path("round_trip.safetensors");
    if (safetensors_write(path, n, names, dtypes, ndims, shapes, datas, err, sizeof err) != 0)
        fail_msg("%s", err);

    /* The file itself: data area 8-byte aligned, header accepted by check_header. */
    size_t len, count = 0;
    uint8_t *raw = read_bytes(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    assert_int_equal((8 + hlen) % 8, 0);
    assert_int_equal(safetensors_check_header(raw, len, &count, err, sizeof err), 0);
    assert_int_equal(count, n);
    size_t data_bytes = 24 + 40 + 6 + 4 + 3 + 8 + 8 + 4 + 0;
    assert_int_equal(len, 8 + hlen + data_bytes); /* no gaps, nothing after */
    free(raw);

    safetensors_t *st = open_ok(path);
    assert_int_equal(safetensors_count(st), n);
    for (size_t i = 0; i < n; i++) {
        const st_tensor_t *t = safetensors_at(st, i);
        assert_non_null(t);
        assert_string_equal(t->name, names[i]); /* the order written */
        assert_ptr_equal(safetensors_find(st, names[i]), t);
        assert_int_equal(t->dtype, dtypes[i]);
        assert_int_equal(t->ndim, ndims[i]);
        for (int d = 0; d < ndims[i]; d++)
            assert_int_equal(t->shape[d], shapes[i][d]);
        assert_int_equal(t->bytes, (uint64_t)nn_numel(ndims[i], shapes[i]) *
                                       nn_dtype_size(dtypes[i]));
        if (t->bytes > 0)
            assert_memory_equal(t->data, datas[i], t->bytes);
        /* The writer lays data out so that each tensor is aligned to its element size. */
        assert_int_equal((uintptr_t)t->data % nn_dtype_size(t->dtype), 0);
        assert_string_equal(t->file, path);
    }
    assert_null(safetensors_at(st, n));
    assert_null(safetensors_find(st, "w"));
    assert_null(safetensors_find(st, "w.f32x"));
    assert_null(safetensors_metadata(st, "format"));

    float out[20];
    assert_int_equal(safetensors_read_f32(st, "w.f32", 2, shapes[0], out, err, sizeof err), 0);
    assert_memory_equal(out, f32, sizeof f32);
    assert_int_equal(safetensors_read_f32(st, "w.bf16", 2, shapes[1], out, err, sizeof err), 0);
    for (int i = 0; i < 20; i++)
        assert_true(out[i] == (float)(i - 10) * 0.375f); /* exact in bf16 */
    assert_int_equal(safetensors_read_f32(st, "w.f16", 1, shapes[2], out, err, sizeof err), 0);
    assert_true(out[0] == 1.0f && out[1] == 65504.0f && out[2] == ldexpf(1.0f, -24));
    assert_int_equal(safetensors_read_f32(st, "w.f8", 2, shapes[3], out, err, sizeof err), 0);
    assert_true(out[0] == 1.0f && out[1] == 448.0f && out[2] == ldexpf(1.0f, -9) &&
                out[3] == -2.0f);
    assert_int_equal(safetensors_read_f32(st, "scale", 0, NULL, out, err, sizeof err), 0);
    assert_true(out[0] == 42.0f);
    assert_int_equal(safetensors_read_f32(st, "empty", 2, shapes[8], out, err, sizeof err), 0);

    assert_int_equal(safetensors_read_f32(st, "ids.i32", 1, shapes[5], out, err, sizeof err), -1);
    assert_contains(err, path);
    assert_contains(err, "ids.i32 is i32[2], not a floating-point type");
    safetensors_close(&st);
    assert_null(st);
    safetensors_close(&st); /* closing NULL is harmless */
}

/* A bf16 tensor long enough for the vectorised path, at an odd address (as a file from
 * another writer may have it). */
static void test_bf16_large_unaligned(void **state)
{
    enum { N = 4099 };
    char header[256];
    int hl = snprintf(header, sizeof header,
                      "{'pad':{'dtype':'U8','shape':[1],'data_offsets':[0,1]},"
                      "'w':{'dtype':'BF16','shape':[%d],'data_offsets':[1,%d]}}",
                      N, 1 + 2 * N);
    while (hl % 8 != 0) /* the data area on 8 bytes, so that w is at an odd address */
        header[hl++] = ' ';
    header[hl] = '\0';
    size_t len;
    uint8_t *buf = make_file(header, 1 + 2 * N, &len);
    uint16_t *v = malloc(N * sizeof *v);
    float *out = malloc(N * sizeof *out);
    assert_non_null(v);
    assert_non_null(out);
    for (int i = 0; i < N; i++) {
        v[i] = (uint16_t)(i * 2654435761u >> 16);
        memcpy(buf + 8 + hl + 1 + 2 * i, &v[i], 2);
    }
    const char *path = tmp_path("large.safetensors");
    write_bytes(path, buf, len);
    free(buf);

    safetensors_t *st = open_ok(path);
    const st_tensor_t *t = safetensors_find(st, "w");
    assert_int_equal((uintptr_t)t->data % 2, 1);
    int64_t shape[1] = {N};
    assert_int_equal(safetensors_read_f32(st, "w", 1, shape, out, err, sizeof err), 0);
    for (int i = 0; i < N; i++) {
        uint32_t got;
        memcpy(&got, &out[i], sizeof got);
        assert_int_equal(got, (uint32_t)v[i] << 16);
    }
    safetensors_close(&st);
    free(v);
    free(out);
}

static void test_read_errors(void **state)
{
    float values[64 * 32] = {0};
    int64_t shape[2] = {64, 32};
    const char *path = tmp_path("errors.safetensors");
    write_f32(path, "img_in.weight", 2, shape, values);
    safetensors_t *st = open_ok(path);
    float *out = malloc(64 * 64 * sizeof *out);
    assert_non_null(out);

    int64_t want[2] = {64, 64};
    assert_int_equal(safetensors_read_f32(st, "img_in.weight", 2, want, out, err, sizeof err), -1);
    char expect[512];
    snprintf(expect, sizeof expect,
             "%s: tensor img_in.weight has shape f32[64,32], expected [64,64]", path);
    assert_string_equal(err, expect);

    int64_t want3[3] = {64, 32, 1};
    assert_int_equal(safetensors_read_f32(st, "img_in.weight", 3, want3, out, err, sizeof err), -1);
    assert_contains(err, "has shape f32[64,32], expected [64,32,1]");

    assert_int_equal(safetensors_read_f32(st, "img_in.bias", 1, want, out, err, sizeof err), -1);
    snprintf(expect, sizeof expect, "%s: no tensor img_in.bias (expected f32[64])", path);
    assert_string_equal(err, expect);
    safetensors_close(&st);
    free(out);
}

/* The message names the tensor's dtype as stored: bf16 here. */
static void test_read_error_bf16(void **state)
{
    uint16_t v[64 * 32] = {0};
    const char *names[] = {"img_in.weight"};
    nn_dtype_t dtypes[] = {NN_DTYPE_BF16};
    int ndims[] = {2};
    const int64_t shapes[][NN_MAX_DIMS] = {{64, 32}};
    const void *datas[] = {v};
    const char *path = tmp_path("bf16.safetensors");
    assert_int_equal(safetensors_write(path, 1, names, dtypes, ndims, shapes, datas, err,
                                       sizeof err), 0);
    safetensors_t *st = open_ok(path);
    int64_t want[2] = {64, 64};
    float out[1];
    assert_int_equal(safetensors_read_f32(st, "img_in.weight", 2, want, out, err, sizeof err), -1);
    assert_contains(err, path);
    assert_contains(err, "tensor img_in.weight has shape bf16[64,32], expected [64,64]");
    safetensors_close(&st);
}

static void test_metadata(void **state)
{
    size_t len;
    uint8_t *buf = make_file("{'__metadata__':{'format':'pt','note':'\\u00e9'},"
                             "'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]}}",
                             8, &len);
    const char *path = tmp_path("meta.safetensors");
    write_bytes(path, buf, len);
    free(buf);
    safetensors_t *st = open_ok(path);
    assert_int_equal(safetensors_count(st), 1); /* __metadata__ is not a tensor */
    assert_string_equal(safetensors_metadata(st, "format"), "pt");
    assert_string_equal(safetensors_metadata(st, "note"), "\xc3\xa9");
    assert_null(safetensors_metadata(st, "missing"));
    assert_null(safetensors_find(st, "__metadata__"));
    safetensors_close(&st);

    check_bad("{'__metadata__':{'n':1}}", 0, "__metadata__ value for \"n\" is not a string");
    check_bad("{'__metadata__':['pt']}", 0, "__metadata__ is not a JSON object");
}

/* Headers that are fine: the edges of what is allowed. */
static void test_header_good(void **state)
{
    assert_int_equal(check_good("{}", 0), 0);
    assert_int_equal(check_good("{}", 100), 0); /* data nobody points at */
    assert_int_equal(check_good("{'a':{'dtype':'F32','shape':[],'data_offsets':[0,4]}}   ",
                                4), 1); /* padding spaces after the JSON */
    assert_int_equal(check_good("{'a':{'dtype':'BF16','shape':[0,3],'data_offsets':[2,2]},"
                                "'b':{'dtype':'U8','shape':[0],'data_offsets':[2,2]},"
                                "'c':{'dtype':'I64','shape':[1],'data_offsets':[0,8]},"
                                "'d':{'dtype':'I32','shape':[1,1,1,1,1],'data_offsets':[8,12]}}",
                                12), 4); /* empty tensors inside others overlap nothing */
    assert_int_equal(check_good("{'b':{'dtype':'F16','shape':[2],'data_offsets':[4,8]},"
                                "'a':{'dtype':'F8_E4M3','shape':[4],'data_offsets':[0,4]}}",
                                8), 2); /* adjacent, out of order */
    char name[ST_NAME_MAX + 1];
    memset(name, 'n', ST_NAME_MAX);
    name[ST_NAME_MAX] = '\0';
    char header[512];
    snprintf(header, sizeof header, "{'%s':{'dtype':'U8','shape':[1],'data_offsets':[0,1]}}",
             name);
    assert_int_equal(check_good(header, 1), 1);
}

/* Every kind of corrupt header is refused with a message saying what is wrong. */
static void test_header_bad(void **state)
{
    uint8_t tiny[5] = {0};
    assert_int_equal(safetensors_check_header(tiny, sizeof tiny, NULL, err, sizeof err), -1);
    assert_contains(err, "too short");

    /* Header length over the format's limit, and past the end of the file. */
    uint8_t big[16] = {0};
    uint64_t hlen = (uint64_t)ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++)
        big[i] = (uint8_t)(hlen >> (8 * i));
    assert_int_equal(safetensors_check_header(big, sizeof big, NULL, err, sizeof err), -1);
    assert_contains(err, "over the format's limit");
    memset(big, 0xff, 8);
    assert_int_equal(safetensors_check_header(big, sizeof big, NULL, err, sizeof err), -1);
    assert_contains(err, "over the format's limit");
    big[0] = 9;
    memset(big + 1, 0, 7);
    memcpy(big + 8, "{}      ", 8);
    assert_int_equal(safetensors_check_header(big, sizeof big, NULL, err, sizeof err), -1);
    assert_contains(err, "header length 9 runs past the end of the file (16 bytes)");

    check_bad("{not json", 0, "not valid JSON");
    check_bad("", 0, "not valid JSON");
    check_bad("{'a':1} x", 0, "not valid JSON");
    check_bad("[1,2]", 0, "header is not a JSON object");
    check_bad("\"a\"", 0, "not valid JSON"); /* jansson wants an array or object at the top */
    check_bad("{'a':[]}", 0, "tensor a: entry is not a JSON object");

    const char *e = "'shape':[2],'data_offsets':[0,8]}}";
    char h[512];
    snprintf(h, sizeof h, "{'a':{'dtype':'F64',%s", e);
    check_bad(h, 8, "tensor a has unsupported dtype F64");
    snprintf(h, sizeof h, "{'a':{'dtype':'f32',%s", e);
    check_bad(h, 8, "unsupported dtype f32");
    snprintf(h, sizeof h, "{'a':{'dtype':7,%s", e);
    check_bad(h, 8, "tensor a: no \"dtype\" string");
    check_bad("{'a':{'shape':[2],'data_offsets':[0,8]}}", 8, "no \"dtype\" string");

    check_bad("{'a':{'dtype':'F32','data_offsets':[0,8]}}", 8, "tensor a: no \"shape\" array");
    check_bad("{'a':{'dtype':'F32','shape':2,'data_offsets':[0,8]}}", 8, "no \"shape\" array");
    check_bad("{'a':{'dtype':'F32','shape':[2,-1],'data_offsets':[0,8]}}", 8,
              "tensor a: shape[1] is not a non-negative integer");
    check_bad("{'a':{'dtype':'F32','shape':[2.0],'data_offsets':[0,8]}}", 8,
              "shape[0] is not a non-negative integer");
    check_bad("{'a':{'dtype':'F32','shape':['2'],'data_offsets':[0,8]}}", 8,
              "shape[0] is not a non-negative integer");
    check_bad("{'a':{'dtype':'F32','shape':[1,1,1,1,1,2],'data_offsets':[0,8]}}", 8,
              "tensor a has 6 dimensions, more than the 5 supported");
    check_bad("{'a':{'dtype':'F32','shape':[4294967296,4294967296],'data_offsets':[0,8]}}",
              8, "tensor a: shape f32[4294967296,4294967296] is too large");
    check_bad("{'a':{'dtype':'I64','shape':[2305843009213693952,1],'data_offsets':[0,8]}}",
              8, "is too large"); /* fits int64 elements, not bytes */
    check_bad("{'a':{'dtype':'F32','shape':[99999999999999999999],'data_offsets':[0,8]}}",
              8, "not valid JSON"); /* jansson: too big an integer */

    check_bad("{'a':{'dtype':'F32','shape':[2]}}", 8, "tensor a: data_offsets is not");
    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0]}}", 8, "data_offsets is not");
    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8,9]}}", 8,
              "data_offsets is not");
    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[-8,0]}}", 8, "data_offsets is not");
    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,16]}}", 8,
              "tensor a: data_offsets [0, 16] are outside the data area of 8 bytes");
    check_bad("{'a':{'dtype':'F32','shape':[0],'data_offsets':[9,9]}}", 8,
              "outside the data area");
    check_bad("{'a':{'dtype':'F32','shape':[0],'data_offsets':[8,4]}}", 8,
              "data_offsets [8, 4] are outside");
    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,6]}}", 8,
              "tensor a: data_offsets [0, 6] hold 6 bytes, but f32[2] needs 8");
    check_bad("{'a':{'dtype':'BF16','shape':[2,2],'data_offsets':[0,16]}}", 16,
              "hold 16 bytes, but bf16[2,2] needs 8");

    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},"
              "'b':{'dtype':'F32','shape':[2],'data_offsets':[4,12]}}",
              12, "tensors a and b overlap");
    check_bad("{'b':{'dtype':'U8','shape':[2],'data_offsets':[5,7]},"
              "'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]}}",
              12, "tensors a and b overlap"); /* one inside the other */
    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},"
              "'b':{'dtype':'F32','shape':[2],'data_offsets':[0,8]}}",
              8, "overlap"); /* the same bytes twice */

    check_bad("{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},"
              "'a':{'dtype':'F32','shape':[2],'data_offsets':[8,16]}}",
              16, "duplicate object key");
    check_bad("{'':{'dtype':'U8','shape':[1],'data_offsets':[0,1]}}", 1, "empty name");

    char name[ST_NAME_MAX + 2];
    memset(name, 'n', ST_NAME_MAX + 1);
    name[ST_NAME_MAX + 1] = '\0';
    snprintf(h, sizeof h, "{'%s':{'dtype':'U8','shape':[1],'data_offsets':[0,1]}}", name);
    check_bad(h, 1, "is 257 bytes, over the limit of 256");

    /* A NUL inside the header is not JSON. */
    size_t len;
    uint8_t *buf = make_file("{'a':{'dtype':'U8','shape':[1],'data_offsets':[0,1]}}", 1, &len);
    buf[12] = '\0';
    assert_int_equal(safetensors_check_header(buf, len, NULL, err, sizeof err), -1);
    assert_contains(err, "not valid JSON");
    free(buf);
}

/* A corrupt file found through safetensors_open: the message names the file. */
static void test_open_corrupt_file(void **state)
{
    size_t len;
    uint8_t *buf = make_file("{'a':{'dtype':'F32','shape':[3],'data_offsets':[0,8]}}", 8, &len);
    const char *path = tmp_path("corrupt.safetensors");
    write_bytes(path, buf, len);
    free(buf);
    open_bad(path, path, "tensor a: data_offsets [0, 8] hold 8 bytes, but f32[3] needs 12");

    const char *empty = tmp_path("empty.safetensors");
    write_bytes(empty, "", 0);
    open_bad(empty, empty, "too short");

    open_bad(tmp_path("absent.safetensors"), "absent.safetensors", "No such file");
}

/* Two shards and an index, as transformers and diffusers save them. */
static void write_sharded(const char *dir, const char *index_json)
{
    char path[512];
    mkdir(dir, 0755);
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    uint16_t c[3] = {nn_f32_to_bf16(7), nn_f32_to_bf16(8), nn_f32_to_bf16(9)};
    const char *n1[] = {"a", "b"};
    nn_dtype_t d1[] = {NN_DTYPE_F32, NN_DTYPE_F32};
    int k1[] = {2, 1};
    const int64_t s1[][NN_MAX_DIMS] = {{2, 2}, {2}};
    const void *v1[] = {a, b};
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    assert_int_equal(safetensors_write(path, 2, n1, d1, k1, s1, v1, err, sizeof err), 0);
    const char *n2[] = {"c"};
    nn_dtype_t d2[] = {NN_DTYPE_BF16};
    int k2[] = {1};
    const int64_t s2[][NN_MAX_DIMS] = {{3}};
    const void *v2[] = {c};
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    assert_int_equal(safetensors_write(path, 1, n2, d2, k2, s2, v2, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *json = json_of(index_json);
    write_bytes(path, json, strlen(json));
    free(json);
}

#define INDEX_OK                                                                          \
    "{'metadata':{'total_size':30},'weight_map':{"                                        \
    "'a':'model-00001-of-00002.safetensors','c':'model-00002-of-00002.safetensors',"      \
    "'b':'model-00001-of-00002.safetensors'}}"

static void test_sharded(void **state)
{
    char dir[256], index[300], shard2[300];
    snprintf(dir, sizeof dir, "%s", tmp_path("sharded"));
    write_sharded(dir, INDEX_OK);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    snprintf(shard2, sizeof shard2, "%s/model-00002-of-00002.safetensors", dir);

    /* Through the index, and through the folder. */
    for (int via = 0; via < 2; via++) {
        safetensors_t *st = open_ok(via == 0 ? index : dir);
        assert_int_equal(safetensors_count(st), 3);
        const st_tensor_t *c = safetensors_find(st, "c");
        assert_non_null(c);
        assert_string_equal(c->file, shard2);
        assert_int_equal(c->dtype, NN_DTYPE_BF16);
        float out[4];
        int64_t s3[1] = {3}, s22[2] = {2, 2};
        assert_int_equal(safetensors_read_f32(st, "c", 1, s3, out, err, sizeof err), 0);
        assert_true(out[0] == 7 && out[1] == 8 && out[2] == 9);
        assert_int_equal(safetensors_read_f32(st, "a", 2, s22, out, err, sizeof err), 0);
        assert_true(out[0] == 1 && out[3] == 4);
        assert_int_equal(safetensors_read_f32(st, "d", 1, s3, out, err, sizeof err), -1);
        assert_contains(err, "model.safetensors.index.json: no tensor d (expected f32[3])");
        assert_int_equal(safetensors_read_f32(st, "c", 2, s22, out, err, sizeof err), -1);
        assert_contains(err, shard2);
        assert_contains(err, "tensor c has shape bf16[3], expected [2,2]");
        safetensors_close(&st);
    }
}

static void test_sharded_bad(void **state)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tmp_path("sharded_bad"));
    /* The index puts c in the wrong shard. */
    write_sharded(dir, "{'weight_map':{'a':'model-00001-of-00002.safetensors',"
                       "'c':'model-00001-of-00002.safetensors',"
                       "'b':'model-00002-of-00002.safetensors'}}");
    open_bad(dir, "weight_map puts tensor c in model-00001-of-00002.safetensors, which does not "
                  "hold it", NULL);
    /* A tensor the shards do not have. */
    write_sharded(dir, "{'weight_map':{'a':'model-00001-of-00002.safetensors',"
                       "'zz':'model-00002-of-00002.safetensors'}}");
    open_bad(dir, "weight_map puts tensor zz in model-00002-of-00002.safetensors", NULL);
    /* A shard that is not there. */
    write_sharded(dir, "{'weight_map':{'a':'model-00001-of-00003.safetensors'}}");
    open_bad(dir, "model-00001-of-00003.safetensors", "No such file");
    /* Shard names that leave the folder. */
    write_sharded(dir, "{'weight_map':{'a':'../model-00001-of-00002.safetensors'}}");
    open_bad(dir, "weight_map entry for a is not the name of a file beside the index", NULL);
    write_sharded(dir, "{'weight_map':{'a':5}}");
    open_bad(dir, "weight_map entry for a is not", NULL);
    /* Not an index. */
    write_sharded(dir, "{'weight_map':{'a':");
    open_bad(dir, "model.safetensors.index.json:1: not valid JSON", NULL);
    write_sharded(dir, "{'metadata':{}}");
    open_bad(dir, "no \"weight_map\" object", NULL);
    write_sharded(dir, "{'weight_map':{}}");
    open_bad(dir, "weight_map is empty", NULL);
    write_sharded(dir, "[]");
    open_bad(dir, "no \"weight_map\" object", NULL);

    /* A shard with a corrupt header: the message names the shard. */
    write_sharded(dir, INDEX_OK);
    char shard[512];
    snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
    size_t len;
    uint8_t *buf = make_file("{'c':{'dtype':'F64','shape':[3],'data_offsets':[0,24]}}", 24, &len);
    write_bytes(shard, buf, len);
    free(buf);
    open_bad(dir, shard, "tensor c has unsupported dtype F64");

    /* The same tensor in two shards. */
    float x[2] = {0};
    int64_t s[1] = {2};
    write_f32(shard, "a", 1, s, x);
    open_bad(dir, "tensor a is in both", "model-00002-of-00002.safetensors");
}

static void test_folder(void **state)
{
    char dir[256], path[512];
    float x[2] = {1, 2};
    int64_t s[1] = {2};

    snprintf(dir, sizeof dir, "%s", tmp_path("folder"));
    mkdir(dir, 0755);
    open_bad(dir, dir, "no diffusion_pytorch_model.safetensors[.index.json] or model.safetensors");

    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    write_f32(path, "x", 1, s, x);
    safetensors_t *st = open_ok(dir);
    assert_string_equal(safetensors_find(st, "x")->file, path);
    safetensors_close(&st);
    char slash[300];
    snprintf(slash, sizeof slash, "%s/", dir); /* a trailing slash is the same folder */
    st = open_ok(slash);
    assert_string_equal(safetensors_find(st, "x")->file, path);
    safetensors_close(&st);

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_f32(path, "y", 1, s, x);
    open_bad(dir, "holds both diffusion_pytorch_model.safetensors and model.safetensors",
             "expected exactly one");

    /* A folder named like a checkpoint is not one. */
    char sub[300];
    snprintf(sub, sizeof sub, "%s", tmp_path("folder2"));
    mkdir(sub, 0755);
    snprintf(path, sizeof path, "%s/model.safetensors", sub);
    mkdir(path, 0755);
    open_bad(sub, "no diffusion_pytorch_model.safetensors", NULL);
    open_bad(path, "no diffusion_pytorch_model.safetensors", NULL);
}

static void test_write_errors(void **state)
{
    float x[2] = {1, 2};
    const char *names[] = {"a", "a"};
    nn_dtype_t dtypes[] = {NN_DTYPE_F32, NN_DTYPE_F32};
    int ndims[] = {1, 1};
    const int64_t shapes[][NN_MAX_DIMS] = {{2}, {2}};
    const void *datas[] = {x, x};
    const char *path = tmp_path("write_errors.safetensors");

    assert_int_equal(safetensors_write(path, 2, names, dtypes, ndims, shapes, datas, err,
                                       sizeof err), -1);
    assert_contains(err, "tensor a is given twice");
    assert_int_equal(access(path, F_OK), -1); /* nothing written */

    const char *meta[] = {"__metadata__"};
    assert_int_equal(safetensors_write(path, 1, meta, dtypes, ndims, shapes, datas, err,
                                       sizeof err), -1);
    assert_contains(err, "no usable name");

    const char *one[] = {"a"};
    nn_dtype_t bad_dtype[] = {NN_DTYPE_COUNT};
    assert_int_equal(safetensors_write(path, 1, one, bad_dtype, ndims, shapes, datas, err,
                                       sizeof err), -1);
    assert_contains(err, "tensor a has a bad dtype or shape");
    const int64_t neg[][NN_MAX_DIMS] = {{-2}};
    assert_int_equal(safetensors_write(path, 1, one, dtypes, ndims, neg, datas, err,
                                       sizeof err), -1);
    assert_contains(err, "bad dtype or shape");
    const void *none[] = {NULL};
    assert_int_equal(safetensors_write(path, 1, one, dtypes, ndims, shapes, none, err,
                                       sizeof err), -1);
    assert_contains(err, "tensor a has no data");

    const char *nowhere = "/nonexistent-dir-for-test/x.safetensors";
    assert_int_equal(safetensors_write(nowhere, 1, one, dtypes, ndims, shapes, datas, err,
                                       sizeof err), -1);
    assert_contains(err, nowhere);

    /* No tensors at all is a valid file. */
    assert_int_equal(safetensors_write(path, 0, NULL, NULL, NULL, NULL, NULL, err, sizeof err),
                     0);
    safetensors_t *st = open_ok(path);
    assert_int_equal(safetensors_count(st), 0);
    assert_null(safetensors_find(st, "a"));
    safetensors_close(&st);
}

/* A write that fails half way (here: over the file size limit) leaves no file behind. */
static void test_write_failure(void **state)
{
    enum { N = 1 << 16 };
    float *x = calloc(N, sizeof *x);
    assert_non_null(x);
    const char *names[] = {"x"};
    nn_dtype_t dtypes[] = {NN_DTYPE_F32};
    int ndims[] = {1};
    const int64_t shapes[][NN_MAX_DIMS] = {{N}};
    const void *datas[] = {x};
    const char *path = tmp_path("too_big.safetensors");

    struct rlimit old, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 4096;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN); /* EFBIG instead of death */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    int rc = safetensors_write(path, 1, names, dtypes, ndims, shapes, datas, err, sizeof err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    free(x);

    assert_int_equal(rc, -1);
    assert_contains(err, path);
    assert_contains(err, "write: File too large");
    assert_int_equal(access(path, F_OK), -1);
}

/* The committed tiny DiT checkpoint, when it is there: a real file from the reference. */
static void test_golden_dit(void **state)
{
    if (access(GOLDEN_DIT, R_OK) != 0)
        skip();
    safetensors_t *st = open_ok(GOLDEN_DIT);
    assert_true(safetensors_count(st) > 0);
    for (size_t i = 0; i < safetensors_count(st); i++) {
        const st_tensor_t *t = safetensors_at(st, i);
        assert_ptr_equal(safetensors_find(st, t->name), t);
        if (t->dtype != NN_DTYPE_F32 && t->dtype != NN_DTYPE_BF16 && t->dtype != NN_DTYPE_F16)
            continue;
        size_t n = (size_t)nn_numel(t->ndim, t->shape);
        float *out = malloc((n + 1) * sizeof *out);
        assert_non_null(out);
        if (safetensors_read_f32(st, t->name, t->ndim, t->shape, out, err, sizeof err) != 0)
            fail_msg("%s", err);
        for (size_t k = 0; k < n; k++)
            if (!isfinite(out[k]))
                fail_msg("%s: %s[%zu] is %g", GOLDEN_DIT, t->name, k, (double)out[k]);
        free(out);
    }
    safetensors_close(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),       cmocka_unit_test(test_bf16_large_unaligned),
        cmocka_unit_test(test_read_errors),      cmocka_unit_test(test_read_error_bf16),
        cmocka_unit_test(test_metadata),         cmocka_unit_test(test_header_good),
        cmocka_unit_test(test_header_bad),       cmocka_unit_test(test_open_corrupt_file),
        cmocka_unit_test(test_sharded),          cmocka_unit_test(test_sharded_bad),
        cmocka_unit_test(test_folder),           cmocka_unit_test(test_write_errors),
        cmocka_unit_test(test_write_failure),    cmocka_unit_test(test_golden_dit),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
