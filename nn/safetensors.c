/* safetensors: maps checkpoint files, validates their headers before trusting a byte of them,
 * and copies tensors out as f32. The format (huggingface/safetensors, docs "Format"): an
 * 8-byte little-endian header length, a JSON header, then the data area that the header's
 * data_offsets point into. */
#include "nn/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nn/safetensors.c maps little-endian tensor data as is"
#endif

#define ST_INDEX_SUFFIX ".index.json"
#define ST_SHARD_NAME_MAX 255

typedef struct {
    char *key;
    char *value;
} st_meta_t;

typedef struct {
    char *path;
    uint8_t *map;
    size_t size;
} st_file_t;

/* One file's header, parsed and checked. Tensor names are owned here until moved. */
typedef struct {
    st_tensor_t *tensors;
    size_t n;
    st_meta_t *meta;
    size_t n_meta;
} st_header_t;

struct safetensors {
    char *path;               /* the file or index that was opened, after resolving a folder */
    st_file_t *files;
    size_t n_files;
    st_tensor_t *tensors;     /* in header order, shard after shard */
    size_t n_tensors;
    const st_tensor_t **by_name; /* the same, sorted by name, for bsearch */
    st_meta_t *meta;
    size_t n_meta;
};

static const struct {
    const char *name;
    nn_dtype_t dtype;
} st_dtypes[] = {
    {"F32", NN_DTYPE_F32}, {"BF16", NN_DTYPE_BF16}, {"F16", NN_DTYPE_F16},
    {"F8_E4M3", NN_DTYPE_F8E4M3}, {"U8", NN_DTYPE_U8}, {"I32", NN_DTYPE_I32},
    {"I64", NN_DTYPE_I64},
};

__attribute__((format(printf, 3, 4))) static void st_error(char *err, size_t errlen,
                                                           const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *st_dtype_tag(nn_dtype_t dtype)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dtype == dtype)
            return st_dtypes[i].name;
    return NULL;
}

static int st_dtype_parse(const char *s, nn_dtype_t *dtype)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, s) == 0) {
            *dtype = st_dtypes[i].dtype;
            return 0;
        }
    return -1;
}

/* "[64,64]": an expected shape, which has no dtype of its own. */
static const char *st_dims_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    char tmp[160];
    nn_shape_str(tmp, sizeof tmp, NN_DTYPE_F32, ndim, shape);
    snprintf(buf, len, "%s", tmp + strlen(nn_dtype_name(NN_DTYPE_F32)));
    return buf;
}

static char *st_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

static void st_header_clear(st_header_t *h)
{
    for (size_t i = 0; i < h->n; i++)
        free((char *)h->tensors[i].name);
    for (size_t i = 0; i < h->n_meta; i++) {
        free(h->meta[i].key);
        free(h->meta[i].value);
    }
    free(h->tensors);
    free(h->meta);
    memset(h, 0, sizeof *h);
}

typedef struct {
    uint64_t begin, end;
    size_t index;
} st_range_t;

static int st_range_cmp(const void *a, const void *b)
{
    const st_range_t *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int st_parse_metadata(json_t *obj, const char *file, st_header_t *h, char *err,
                             size_t errlen)
{
    if (!json_is_object(obj)) {
        st_error(err, errlen, "%s: __metadata__ is not a JSON object", file);
        return -1;
    }
    h->meta = calloc(json_object_size(obj) + 1, sizeof *h->meta);
    if (h->meta == NULL) {
        st_error(err, errlen, "%s: out of memory for the metadata", file);
        return -1;
    }
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value) {
        if (!json_is_string(value)) {
            st_error(err, errlen, "%s: __metadata__ value for \"%.64s\" is not a string", file,
                     key);
            return -1;
        }
        st_meta_t *m = &h->meta[h->n_meta];
        m->key = st_strdup(key);
        m->value = st_strdup(json_string_value(value));
        if (m->key == NULL || m->value == NULL) {
            free(m->key);
            free(m->value);
            st_error(err, errlen, "%s: out of memory for the metadata", file);
            return -1;
        }
        h->n_meta++;
    }
    return 0;
}

/* Reads a JSON integer that must be >= 0. */
static bool st_json_uint(json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = json_integer_value(v);
    return true;
}

/* Checks one tensor entry against the data area and fills t (all but the name). */
static int st_parse_entry(const char *name, json_t *entry, const uint8_t *data,
                          size_t data_size, const char *file, st_tensor_t *t,
                          st_range_t *range, char *err, size_t errlen)
{
    char shape[160];
    if (!json_is_object(entry)) {
        st_error(err, errlen, "%s: tensor %s: entry is not a JSON object", file, name);
        return -1;
    }
    json_t *dtype = json_object_get(entry, "dtype");
    if (!json_is_string(dtype)) {
        st_error(err, errlen, "%s: tensor %s: no \"dtype\" string", file, name);
        return -1;
    }
    if (st_dtype_parse(json_string_value(dtype), &t->dtype) != 0) {
        st_error(err, errlen,
                 "%s: tensor %s has unsupported dtype %.32s (supported: F32, BF16, F16, "
                 "F8_E4M3, U8, I32, I64)",
                 file, name, json_string_value(dtype));
        return -1;
    }
    json_t *dims = json_object_get(entry, "shape");
    if (!json_is_array(dims)) {
        st_error(err, errlen, "%s: tensor %s: no \"shape\" array", file, name);
        return -1;
    }
    if (json_array_size(dims) > NN_MAX_DIMS) {
        st_error(err, errlen, "%s: tensor %s has %zu dimensions, more than the %d supported",
                 file, name, json_array_size(dims), NN_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)json_array_size(dims);
    for (int i = 0; i < t->ndim; i++) {
        if (!st_json_uint(json_array_get(dims, (size_t)i), &t->shape[i])) {
            st_error(err, errlen, "%s: tensor %s: shape[%d] is not a non-negative integer",
                     file, name, i);
            return -1;
        }
    }
    int64_t numel = nn_numel(t->ndim, t->shape);
    uint64_t size = nn_dtype_size(t->dtype);
    if (numel < 0 || (uint64_t)numel > UINT64_MAX / size) {
        st_error(err, errlen, "%s: tensor %s: shape %s is too large", file, name,
                 nn_shape_str(shape, sizeof shape, t->dtype, t->ndim, t->shape));
        return -1;
    }
    uint64_t bytes = (uint64_t)numel * size;

    json_t *offsets = json_object_get(entry, "data_offsets");
    int64_t begin, end;
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
        !st_json_uint(json_array_get(offsets, 0), &begin) ||
        !st_json_uint(json_array_get(offsets, 1), &end)) {
        st_error(err, errlen, "%s: tensor %s: data_offsets is not [begin, end] of non-negative "
                 "integers", file, name);
        return -1;
    }
    if (begin > end || (uint64_t)end > data_size) {
        st_error(err, errlen,
                 "%s: tensor %s: data_offsets [%lld, %lld] are outside the data area of %zu "
                 "bytes",
                 file, name, (long long)begin, (long long)end, data_size);
        return -1;
    }
    if ((uint64_t)(end - begin) != bytes) {
        st_error(err, errlen,
                 "%s: tensor %s: data_offsets [%lld, %lld] hold %llu bytes, but %s needs %llu",
                 file, name, (long long)begin, (long long)end,
                 (unsigned long long)(end - begin),
                 nn_shape_str(shape, sizeof shape, t->dtype, t->ndim, t->shape),
                 (unsigned long long)bytes);
        return -1;
    }
    t->data = data + begin;
    t->bytes = bytes;
    t->file = file;
    range->begin = (uint64_t)begin;
    range->end = (uint64_t)end;
    return 0;
}

/* Parses and checks the header of a whole file held in buf. file names it in errors and is
 * stored (not copied) in every tensor. */
static int st_header_parse(const uint8_t *buf, size_t len, const char *file, st_header_t *h,
                           char *err, size_t errlen)
{
    memset(h, 0, sizeof *h);
    if (len < 8) {
        st_error(err, errlen, "%s: %zu bytes, too short for a safetensors file", file, len);
        return -1;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen > ST_MAX_HEADER) {
        st_error(err, errlen, "%s: header length %llu is over the format's limit of %u bytes",
                 file, (unsigned long long)hlen, ST_MAX_HEADER);
        return -1;
    }
    if (hlen > len - 8) {
        st_error(err, errlen, "%s: header length %llu runs past the end of the file (%zu bytes)",
                 file, (unsigned long long)hlen, len);
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        st_error(err, errlen, "%s: header is not valid JSON: %s (at byte %d of the header)",
                 file, jerr.text, jerr.position);
        return -1;
    }
    int rc = -1;
    st_range_t *ranges = NULL;
    if (!json_is_object(root)) {
        st_error(err, errlen, "%s: header is not a JSON object", file);
        goto out;
    }
    const uint8_t *data = buf + 8 + hlen;
    size_t data_size = len - 8 - (size_t)hlen;
    size_t cap = json_object_size(root) + 1;
    h->tensors = calloc(cap, sizeof *h->tensors);
    ranges = calloc(cap, sizeof *ranges);
    if (h->tensors == NULL || ranges == NULL) {
        st_error(err, errlen, "%s: out of memory for %zu header entries", file, cap);
        goto out;
    }

    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0) {
            if (st_parse_metadata(value, file, h, err, errlen) != 0)
                goto out;
            continue;
        }
        size_t name_len = strlen(key);
        if (name_len == 0) {
            st_error(err, errlen, "%s: a tensor has an empty name", file);
            goto out;
        }
        if (name_len > ST_NAME_MAX) {
            st_error(err, errlen, "%s: tensor name \"%.48s...\" is %zu bytes, over the limit of %d",
                     file, key, name_len, ST_NAME_MAX);
            goto out;
        }
        st_tensor_t *t = &h->tensors[h->n];
        st_range_t *r = &ranges[h->n];
        if (st_parse_entry(key, value, data, data_size, file, t, r, err, errlen) != 0)
            goto out;
        t->name = st_strdup(key);
        if (t->name == NULL) {
            st_error(err, errlen, "%s: out of memory for tensor names", file);
            goto out;
        }
        r->index = h->n;
        h->n++;
    }

    /* Overlap: sorted by start, a range that starts before the furthest end so far shares
     * bytes with the range that reached it. Empty ranges hold no bytes and overlap nothing. */
    qsort(ranges, h->n, sizeof *ranges, st_range_cmp);
    uint64_t far = 0;
    size_t far_index = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (ranges[i].begin == ranges[i].end)
            continue;
        if (ranges[i].begin < far) {
            const st_tensor_t *a = &h->tensors[far_index], *b = &h->tensors[ranges[i].index];
            st_error(err, errlen, "%s: tensors %s and %s overlap in the data area", file,
                     a->name, b->name);
            goto out;
        }
        far = ranges[i].end;
        far_index = ranges[i].index;
    }
    rc = 0;
out:
    free(ranges);
    json_decref(root);
    if (rc != 0)
        st_header_clear(h);
    return rc;
}

int safetensors_check_header(const uint8_t *buf, size_t len, size_t *count, char *err,
                             size_t errlen)
{
    st_header_t h;
    if (st_header_parse(buf, len, "buffer", &h, err, errlen) != 0)
        return -1;
    if (count != NULL)
        *count = h.n;
    st_header_clear(&h);
    return 0;
}

static int st_file_map(st_file_t *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st_error(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st_error(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        st_error(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (sb.st_size < 8) {
        st_error(err, errlen, "%s: %lld bytes, too short for a safetensors file", path,
                 (long long)sb.st_size);
        close(fd);
        return -1;
    }
    /* Read-only and private: a file replaced while mapped cannot change what was validated
     * (but a file truncated in place still can, with SIGBUS: checkpoints are not edited in
     * place). */
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        st_error(err, errlen, "%s: mmap: %s", path, strerror(map_errno));
        return -1;
    }
    /* Weights are read once, front to back: aggressive read-ahead, and pages dropped behind. */
    madvise(map, (size_t)sb.st_size, MADV_SEQUENTIAL);
    f->path = st_strdup(path);
    if (f->path == NULL) {
        munmap(map, (size_t)sb.st_size);
        st_error(err, errlen, "%s: out of memory", path);
        return -1;
    }
    f->map = map;
    f->size = (size_t)sb.st_size;
    return 0;
}

static void st_file_unmap(st_file_t *f)
{
    if (f->map != NULL)
        munmap(f->map, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

void safetensors_close(safetensors_t **pst)
{
    if (pst == NULL || *pst == NULL)
        return;
    safetensors_t *st = *pst;
    for (size_t i = 0; i < st->n_tensors; i++)
        free((char *)st->tensors[i].name);
    for (size_t i = 0; i < st->n_meta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    for (size_t i = 0; i < st->n_files; i++)
        st_file_unmap(&st->files[i]);
    free(st->tensors);
    free(st->by_name);
    free(st->meta);
    free(st->files);
    free(st->path);
    free(st);
    *pst = NULL;
}

/* Moves a parsed header's tensors and metadata into st (metadata: the first shard to give a
 * key wins). */
static int st_adopt_header(safetensors_t *st, st_header_t *h, char *err, size_t errlen)
{
    st_tensor_t *tensors = realloc(st->tensors, (st->n_tensors + h->n + 1) * sizeof *tensors);
    if (tensors == NULL)
        goto oom;
    st->tensors = tensors;
    st_meta_t *meta = realloc(st->meta, (st->n_meta + h->n_meta + 1) * sizeof *meta);
    if (meta == NULL)
        goto oom;
    st->meta = meta;
    memcpy(st->tensors + st->n_tensors, h->tensors, h->n * sizeof *h->tensors);
    st->n_tensors += h->n;
    h->n = 0;
    for (size_t i = 0; i < h->n_meta; i++) {
        if (safetensors_metadata(st, h->meta[i].key) != NULL)
            continue; /* left in h, freed with it */
        st->meta[st->n_meta++] = h->meta[i];
        h->meta[i].key = h->meta[i].value = NULL;
    }
    st_header_clear(h);
    return 0;
oom:
    st_error(err, errlen, "%s: out of memory", st->path);
    st_header_clear(h);
    return -1;
}

static int st_name_cmp(const void *a, const void *b)
{
    const st_tensor_t *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Sorts the names for lookups; two shards holding the same tensor is an error, since which
 * one the model gets would be an accident. */
static int st_index_names(safetensors_t *st, char *err, size_t errlen)
{
    st->by_name = malloc((st->n_tensors + 1) * sizeof *st->by_name);
    if (st->by_name == NULL) {
        st_error(err, errlen, "%s: out of memory", st->path);
        return -1;
    }
    for (size_t i = 0; i < st->n_tensors; i++)
        st->by_name[i] = &st->tensors[i];
    qsort(st->by_name, st->n_tensors, sizeof *st->by_name, st_name_cmp);
    for (size_t i = 1; i < st->n_tensors; i++)
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0) {
            st_error(err, errlen, "%s: tensor %s is in both %s and %s", st->path,
                     st->by_name[i]->name, st->by_name[i - 1]->file, st->by_name[i]->file);
            return -1;
        }
    return 0;
}

static int st_open_file(safetensors_t *st, const char *path, char *err, size_t errlen)
{
    st_file_t *files = realloc(st->files, (st->n_files + 1) * sizeof *files);
    if (files == NULL) {
        st_error(err, errlen, "%s: out of memory", path);
        return -1;
    }
    st->files = files;
    st_file_t *f = &st->files[st->n_files];
    if (st_file_map(f, path, err, errlen) != 0)
        return -1;
    st->n_files++;
    st_header_t h;
    if (st_header_parse(f->map, f->size, f->path, &h, err, errlen) != 0)
        return -1;
    return st_adopt_header(st, &h, err, errlen);
}

/* A shard named in an index is a file beside it: no folders, so that an index cannot point
 * outside its checkpoint. */
static bool st_shard_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= ST_SHARD_NAME_MAX && strchr(s, '/') == NULL && strcmp(s, ".") != 0 &&
           strcmp(s, "..") != 0;
}

static int st_open_index(safetensors_t *st, const char *path, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        if (jerr.line < 0)
            st_error(err, errlen, "%s: %s", path, jerr.text);
        else
            st_error(err, errlen, "%s:%d: not valid JSON: %s", path, jerr.line, jerr.text);
        return -1;
    }
    int rc = -1;
    const char **shards = NULL;
    size_t n_shards = 0;
    char *shard_path = NULL;
    json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        st_error(err, errlen, "%s: no \"weight_map\" object", path);
        goto out;
    }
    if (json_object_size(map) == 0) {
        st_error(err, errlen, "%s: weight_map is empty", path);
        goto out;
    }
    /* The distinct shards, in order of first mention: each is opened once. */
    shards = calloc(json_object_size(map), sizeof *shards);
    if (shards == NULL) {
        st_error(err, errlen, "%s: out of memory", path);
        goto out;
    }
    const char *name;
    json_t *value;
    json_object_foreach(map, name, value) {
        const char *shard = json_string_value(value);
        if (shard == NULL || !st_shard_name_ok(shard)) {
            st_error(err, errlen,
                     "%s: weight_map entry for %.300s is not the name of a file beside the index",
                     path, name);
            goto out;
        }
        size_t i = 0;
        while (i < n_shards && strcmp(shards[i], shard) != 0)
            i++;
        if (i == n_shards)
            shards[n_shards++] = shard;
    }

    const char *slash = strrchr(path, '/');
    size_t dir_len = slash == NULL ? 0 : (size_t)(slash - path + 1);
    shard_path = malloc(dir_len + ST_SHARD_NAME_MAX + 1);
    if (shard_path == NULL) {
        st_error(err, errlen, "%s: out of memory", path);
        goto out;
    }
    memcpy(shard_path, path, dir_len);
    for (size_t i = 0; i < n_shards; i++) {
        strcpy(shard_path + dir_len, shards[i]);
        if (st_open_file(st, shard_path, err, errlen) != 0)
            goto out;
    }
    if (st_index_names(st, err, errlen) != 0)
        goto out;

    /* Every tensor the index promises must be in the shard it names. */
    json_object_foreach(map, name, value) {
        const st_tensor_t *t = safetensors_find(st, name);
        const char *shard = json_string_value(value);
        const char *base = NULL;
        if (t != NULL) {
            base = strrchr(t->file, '/');
            base = base == NULL ? t->file : base + 1;
        }
        if (t == NULL || strcmp(base, shard) != 0) {
            st_error(err, errlen, "%s: weight_map puts tensor %.300s in %s, which does not hold it",
                     path, name, shard);
            goto out;
        }
    }
    rc = 0;
out:
    free(shard_path);
    free(shards);
    json_decref(root);
    return rc;
}

static bool st_is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool st_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The checkpoint file inside a folder, as diffusers and transformers name them. */
static char *st_resolve_folder(const char *dir, char *err, size_t errlen)
{
    static const char *const names[] = {
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors",
        "model.safetensors.index.json",
    };
    size_t dir_len = strlen(dir);
    while (dir_len > 1 && dir[dir_len - 1] == '/')
        dir_len--;
    char *found = NULL;
    const char *first = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t len = dir_len + 1 + strlen(names[i]) + 1;
        char *p = malloc(len);
        if (p == NULL) {
            free(found);
            st_error(err, errlen, "%s: out of memory", dir);
            return NULL;
        }
        snprintf(p, len, "%.*s/%s", (int)dir_len, dir, names[i]);
        if (!st_is_file(p)) {
            free(p);
            continue;
        }
        if (found != NULL) {
            st_error(err, errlen, "%s: holds both %s and %s; expected exactly one checkpoint", dir,
                     first, names[i]);
            free(found);
            free(p);
            return NULL;
        }
        found = p;
        first = names[i];
    }
    if (found == NULL)
        st_error(err, errlen,
                 "%s: no diffusion_pytorch_model.safetensors[.index.json] or "
                 "model.safetensors[.index.json] in this folder",
                 dir);
    return found;
}

safetensors_t *safetensors_open(const char *path, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        st_error(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    safetensors_t *st = calloc(1, sizeof *st);
    if (st == NULL) {
        st_error(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    st->path = S_ISDIR(sb.st_mode) ? st_resolve_folder(path, err, errlen) : st_strdup(path);
    if (st->path == NULL) {
        if (!S_ISDIR(sb.st_mode))
            st_error(err, errlen, "%s: out of memory", path);
        free(st);
        return NULL;
    }
    int rc;
    if (st_ends_with(st->path, ST_INDEX_SUFFIX)) {
        rc = st_open_index(st, st->path, err, errlen);
    } else {
        rc = st_open_file(st, st->path, err, errlen);
        if (rc == 0)
            rc = st_index_names(st, err, errlen);
    }
    if (rc != 0) {
        safetensors_close(&st);
        return NULL;
    }
    return st;
}

size_t safetensors_count(const safetensors_t *st)
{
    return st->n_tensors;
}

const st_tensor_t *safetensors_at(const safetensors_t *st, size_t i)
{
    return i < st->n_tensors ? &st->tensors[i] : NULL;
}

const st_tensor_t *safetensors_find(const safetensors_t *st, const char *name)
{
    if (st->by_name == NULL)
        return NULL;
    st_tensor_t key = {.name = name};
    const st_tensor_t *pkey = &key;
    const st_tensor_t **hit =
        bsearch(&pkey, st->by_name, st->n_tensors, sizeof *st->by_name, st_name_cmp);
    return hit == NULL ? NULL : *hit;
}

const char *safetensors_metadata(const safetensors_t *st, const char *key)
{
    for (size_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0)
            return st->meta[i].value;
    return NULL;
}

int safetensors_read_f32(const safetensors_t *st, const char *name, int ndim,
                         const int64_t *shape, float *out, char *err, size_t errlen)
{
    char found[160], want[160];
    const st_tensor_t *t = safetensors_find(st, name);
    if (t == NULL) {
        st_error(err, errlen, "%s: no tensor %s (expected %s)", st->path, name,
                 nn_shape_str(want, sizeof want, NN_DTYPE_F32, ndim, shape));
        return -1;
    }
    bool same = ndim == t->ndim;
    for (int i = 0; same && i < ndim; i++)
        same = shape[i] == t->shape[i];
    if (!same) {
        st_error(err, errlen, "%s: tensor %s has shape %s, expected %s", t->file, name,
                 nn_shape_str(found, sizeof found, t->dtype, t->ndim, t->shape),
                 st_dims_str(want, sizeof want, ndim, shape));
        return -1;
    }
    size_t n = (size_t)nn_numel(t->ndim, t->shape);
    if (nn_convert_to_f32(t->dtype, t->data, out, n) != 0) {
        st_error(err, errlen, "%s: tensor %s is %s, not a floating-point type", t->file, name,
                 nn_shape_str(found, sizeof found, t->dtype, t->ndim, t->shape));
        return -1;
    }
    /* Drop the copied pages from this process's resident set: loading a model otherwise
     * holds the whole mapped file and the converted weights at once, twice the model's size.
     * The mapping is read-only and file-backed, so a later read just faults the pages back in
     * from the page cache. Only whole pages inside the tensor are dropped. */
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0 && t->bytes > 0) {
        uintptr_t begin = ((uintptr_t)t->data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
        uintptr_t end = ((uintptr_t)t->data + t->bytes) & ~((uintptr_t)page - 1);
        if (end > begin)
            madvise((void *)begin, end - begin, MADV_DONTNEED);
    }
    return 0;
}

static int st_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w == 0)
            errno = EIO;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Checks the caller's tensors and lays their data out: largest elements first (stable), so
 * that every tensor starts at a multiple of its element size once the data area is 8-byte
 * aligned, and with no gaps (the reference reader rejects gaps). order[] is the layout. */
static int st_layout(size_t n, const char *const *names, const nn_dtype_t *dtypes,
                     const int *ndims, const int64_t (*shapes)[NN_MAX_DIMS],
                     const void *const *datas, const char *path, uint64_t *sizes,
                     uint64_t *offsets, size_t *order, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        const char *name = names[i];
        if (name == NULL || name[0] == '\0' || strlen(name) > ST_NAME_MAX ||
            strcmp(name, "__metadata__") == 0) {
            st_error(err, errlen, "%s: tensor %zu has no usable name (1 to %d bytes, not "
                     "__metadata__)", path, i, ST_NAME_MAX);
            return -1;
        }
        int64_t numel = nn_numel(ndims[i], shapes[i]);
        if (st_dtype_tag(dtypes[i]) == NULL || numel < 0 ||
            (uint64_t)numel > (uint64_t)INT64_MAX / nn_dtype_size(dtypes[i])) {
            st_error(err, errlen, "%s: tensor %s has a bad dtype or shape", path, name);
            return -1;
        }
        sizes[i] = (uint64_t)numel * nn_dtype_size(dtypes[i]);
        if (sizes[i] > 0 && datas[i] == NULL) {
            st_error(err, errlen, "%s: tensor %s has no data", path, name);
            return -1;
        }
    }
    size_t k = 0;
    uint64_t offset = 0;
    for (size_t elem = 8; elem >= 1; elem /= 2)
        for (size_t i = 0; i < n; i++) {
            if (nn_dtype_size(dtypes[i]) != elem)
                continue;
            if (sizes[i] > (uint64_t)INT64_MAX - offset) {
                st_error(err, errlen, "%s: tensors are too large for one file", path);
                return -1;
            }
            order[k++] = i;
            offsets[i] = offset;
            offset += sizes[i];
        }
    return 0;
}

/* The JSON header, entries in the caller's order. */
static char *st_build_header(size_t n, const char *const *names, const nn_dtype_t *dtypes,
                             const int *ndims, const int64_t (*shapes)[NN_MAX_DIMS],
                             const uint64_t *sizes, const uint64_t *offsets, const char *path,
                             char *err, size_t errlen)
{
    json_t *root = json_object();
    if (root == NULL)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        if (json_object_get(root, names[i]) != NULL) {
            st_error(err, errlen, "%s: tensor %s is given twice", path, names[i]);
            goto fail;
        }
        json_t *dims = json_array();
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", st_dtype_tag(dtypes[i]),
                                  "shape", dims, "data_offsets", (json_int_t)offsets[i],
                                  (json_int_t)(offsets[i] + sizes[i]));
        if (entry == NULL)
            goto oom;
        for (int d = 0; d < ndims[i]; d++)
            if (json_array_append_new(dims, json_integer(shapes[i][d])) != 0) {
                json_decref(entry);
                goto oom;
            }
        if (json_object_set_new(root, names[i], entry) != 0) {
            st_error(err, errlen, "%s: tensor name %s is not valid UTF-8", path, names[i]);
            goto fail;
        }
    }
    char *text = json_dumps(root, JSON_COMPACT);
    if (text == NULL)
        goto oom;
    json_decref(root);
    return text;
oom:
    st_error(err, errlen, "%s: out of memory", path);
fail:
    json_decref(root);
    return NULL;
}

int safetensors_write(const char *path, size_t n, const char *const *names,
                      const nn_dtype_t *dtypes, const int *ndims,
                      const int64_t (*shapes)[NN_MAX_DIMS], const void *const *datas,
                      char *err, size_t errlen)
{
    int rc = -1;
    char *hdr = NULL;
    uint64_t *sizes = calloc(n + 1, sizeof *sizes);
    uint64_t *offsets = calloc(n + 1, sizeof *offsets);
    size_t *order = calloc(n + 1, sizeof *order);
    if (sizes == NULL || offsets == NULL || order == NULL) {
        st_error(err, errlen, "%s: out of memory", path);
        goto out;
    }
    if (st_layout(n, names, dtypes, ndims, shapes, datas, path, sizes, offsets, order, err,
                  errlen) != 0)
        goto out;
    hdr = st_build_header(n, names, dtypes, ndims, shapes, sizes, offsets, path, err, errlen);
    if (hdr == NULL)
        goto out;
    /* Spaces after the JSON (which the format allows) put the data area on an 8-byte
     * boundary, as the reference writer does. */
    size_t json_len = strlen(hdr);
    size_t padded = (json_len + 7) / 8 * 8;
    char *grown = realloc(hdr, padded + 1);
    if (grown == NULL) {
        st_error(err, errlen, "%s: out of memory", path);
        goto out;
    }
    hdr = grown;
    memset(hdr + json_len, ' ', padded - json_len);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));

    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st_error(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    struct stat sb;
    bool regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
    bool ok = st_write_all(fd, len8, sizeof len8) == 0 && st_write_all(fd, hdr, padded) == 0;
    for (size_t k = 0; ok && k < n; k++)
        ok = st_write_all(fd, datas[order[k]], sizes[order[k]]) == 0;
    int write_errno = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        write_errno = errno;
    }
    if (!ok) {
        st_error(err, errlen, "%s: write: %s", path, strerror(write_errno));
        if (regular) /* no half-written checkpoint left behind (but never unlink a device) */
            unlink(path);
        goto out;
    }
    rc = 0;
out:
    free(hdr);
    free(sizes);
    free(offsets);
    free(order);
    return rc;
}
