/* bench_load: what loading bf16 weights into f32 costs next to reading the file's bytes.
 *
 * Writes a ~1 GiB safetensors file of random bf16 values into /tmp (removed at the end, and on
 * SIGINT/SIGTERM), then times, alternately in each round: read() of the whole file into a
 * buffer, and safetensors_open + safetensors_read_f32 of every tensor + safetensors_close. The
 * target is a load of at most twice the read. The file stays in the page cache, so neither
 * side waits for the disk: that is the case where the conversion's own cost shows most (from
 * a cold cache both wait for the same disk). Both destination buffers are touched before
 * timing, so that the figures compare loading, not first-touch page faults of fresh memory.
 *
 *   bench_load [MIB]   (default 1024) */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tools/bench/bench_util.h"
#include "nn/safetensors.h"
#include "nn/tensor.h"

#define ROUNDS 5
#define ROWS 4096
#define COLS 2048 /* 16 MiB of bf16 per tensor, a large DiT linear layer */

static char tmp_path[64];

static void remove_tmp(void)
{
    if (tmp_path[0] != '\0')
        unlink(tmp_path);
}

static void on_signal(int sig)
{
    if (tmp_path[0] != '\0')
        unlink(tmp_path);
    signal(sig, SIG_DFL);
    raise(sig);
}


/* Finite bf16 values of either sign in [2^-7, 2) with random mantissas: weights' range. */
static void fill_random(uint16_t *v, size_t n)
{
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint16_t r = (uint16_t)(x >> 32);
        v[i] = (uint16_t)((r & 0x807fu) | ((0x78u + ((r >> 8) & 7u)) << 7));
    }
}

/* A destination buffer, touched. Both sides get the same kind: 2 MiB aligned and offered
 * transparent huge pages, since the kernel's copy into 4 KiB pages can be several times
 * slower (TLB misses), which would flatter the loader. */
static void *alloc_touched(size_t bytes)
{
    size_t huge = (size_t)2 << 20;
    size_t rounded = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, rounded);
    if (p == NULL)
        return NULL;
    madvise(p, rounded, MADV_HUGEPAGE); /* a hint: without THP, 4 KiB pages on both sides */
    memset(p, 1, rounded);
    return p;
}

static int read_file(const char *path, uint8_t *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t at = 0;
    while (at < size) {
        ssize_t r = read(fd, buf + at, size - at);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        at += (size_t)r;
    }
    close(fd);
    return at == size ? 0 : -1;
}

int main(int argc, char **argv)
{
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 1024;
    if (mib < 16 || mib > (1L << 20)) {
        fprintf(stderr, "usage: bench_load [MIB >= 16]\n");
        return 2;
    }
    size_t n_tensors = (size_t)mib / 16;
    size_t per = (size_t)ROWS * COLS;
    char err[512];

    snprintf(tmp_path, sizeof tmp_path, "/tmp/bench_load.XXXXXX");
    int fd = mkstemp(tmp_path);
    if (fd < 0) {
        fprintf(stderr, "bench_load: mkstemp in /tmp: %s\n", strerror(errno));
        return 1;
    }
    close(fd);
    atexit(remove_tmp);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    /* The file: n_tensors of bf16[ROWS, COLS]. */
    uint16_t *values = malloc(n_tensors * per * sizeof *values);
    char (*names)[32] = calloc(n_tensors, sizeof *names);
    const char **name_ptrs = calloc(n_tensors, sizeof *name_ptrs);
    nn_dtype_t *dtypes = calloc(n_tensors, sizeof *dtypes);
    int *ndims = calloc(n_tensors, sizeof *ndims);
    int64_t (*shapes)[NN_MAX_DIMS] = calloc(n_tensors, sizeof *shapes);
    const void **datas = calloc(n_tensors, sizeof *datas);
    if (values == NULL || names == NULL || name_ptrs == NULL || dtypes == NULL ||
        ndims == NULL || shapes == NULL || datas == NULL) {
        fprintf(stderr, "bench_load: out of memory for %ld MiB\n", mib);
        return 1;
    }
    fill_random(values, n_tensors * per);
    for (size_t i = 0; i < n_tensors; i++) {
        snprintf(names[i], sizeof names[i], "blocks.%zu.mlp.weight", i);
        name_ptrs[i] = names[i];
        dtypes[i] = NN_DTYPE_BF16;
        ndims[i] = 2;
        shapes[i][0] = ROWS;
        shapes[i][1] = COLS;
        datas[i] = values + i * per;
    }
    if (safetensors_write(tmp_path, n_tensors, name_ptrs, dtypes, ndims,
                          (const int64_t (*)[NN_MAX_DIMS])shapes, datas, err, sizeof err) != 0) {
        fprintf(stderr, "bench_load: %s\n", err);
        return 1;
    }
    free(values);

    struct stat sb;
    if (stat(tmp_path, &sb) != 0) {
        fprintf(stderr, "bench_load: %s: %s\n", tmp_path, strerror(errno));
        return 1;
    }
    size_t file_bytes = (size_t)sb.st_size;

    uint8_t *raw = alloc_touched(file_bytes);
    float *out = alloc_touched(n_tensors * per * sizeof *out);
    if (raw == NULL || out == NULL) {
        fprintf(stderr, "bench_load: out of memory for the destination buffers\n");
        return 1;
    }
    if (read_file(tmp_path, raw, file_bytes) != 0) { /* and the page cache is warm */
        fprintf(stderr, "bench_load: %s: read failed\n", tmp_path);
        return 1;
    }

    double t_read[ROUNDS], t_load[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = bench_now_s();
        if (read_file(tmp_path, raw, file_bytes) != 0) {
            fprintf(stderr, "bench_load: %s: read failed\n", tmp_path);
            return 1;
        }
        double t1 = bench_now_s();
        safetensors_t *st = safetensors_open(tmp_path, err, sizeof err);
        if (st == NULL) {
            fprintf(stderr, "bench_load: %s\n", err);
            return 1;
        }
        for (size_t i = 0; i < n_tensors; i++)
            if (safetensors_read_f32(st, names[i], 2, shapes[i], out + i * per, err,
                                     sizeof err) != 0) {
                fprintf(stderr, "bench_load: %s\n", err);
                return 1;
            }
        safetensors_close(&st);
        double t2 = bench_now_s();
        t_read[r] = t1 - t0;
        t_load[r] = t2 - t1;
    }
    /* The load must have produced the file's values, or its time means nothing: compare a
     * sample with the bytes read(), whose data area starts after the header. */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    const uint8_t *data = raw + 8 + hlen;
    for (size_t k = 0; k < n_tensors * per; k += 4099) {
        uint16_t h;
        memcpy(&h, data + 2 * k, sizeof h);
        float want = nn_bf16_to_f32(h);
        if (memcmp(&out[k], &want, sizeof want) != 0) {
            fprintf(stderr, "bench_load: element %zu loaded as %g, file has %g\n", k, out[k],
                    want);
            return 1;
        }
    }

    double read_s = bench_median(t_read, ROUNDS), load_s = bench_median(t_load, ROUNDS);
    double gb = (double)file_bytes / 1e9;
    printf("bench_load: %zu MiB of bf16 in %zu tensors of [%d,%d], page cache warm, median of "
           "%d rounds\n",
           file_bytes >> 20, n_tensors, ROWS, COLS, ROUNDS);
    printf("  %-34s %8.3f s  %6.2f GB/s\n", "read() into a buffer", read_s, gb / read_s);
    printf("  %-34s %8.3f s  %6.2f GB/s of file\n", "safetensors_open + read_f32 (f32)", load_s,
           gb / load_s);
    printf("  %-34s %8.2fx  (target <= 2x: %s)\n", "load / read", load_s / read_s,
           load_s / read_s <= 2.0 ? "met" : "NOT met");
    free(raw);
    free(out);
    free(names);
    free(name_ptrs);
    free(dtypes);
    free(ndims);
    free(shapes);
    free(datas);
    return 0;
}
