/* proto: the diffusiond wire messages (proto.h) as msgpack frames, with msgpack-c.
 * One table per struct names each wire key, the member behind it and its bounds; proto_decode
 * fills a struct from a frame and proto_encode packs one, and both run the same checks over the
 * struct (table_check), so whatever the encoder produces the decoder accepts, and back.
 *
 * Wire keys. Every message is one map with "v" (PROTO_VERSION) and "t" (the type name), then:
 *   hello      stage slot gen pid
 *   ready      slot gen
 *   heartbeat  slot gen jobs_done jobs_failed jobs_dropped inflight busy_us pool_used
 *              pool_capacity
 *   roster     seq slots: [{slot stage replica gen state}]
 *   drain, shutdown: nothing more
 *   job        id attempt to_gen origin route: [stage name]
 *              tensors: [{pool gen off bytes dev dtype shape: [dim]}] err err_msg params
 * Optional: job "err" (default 0), "err_msg" (default "") and "params" (default none); the
 * encoder leaves them out while they hold the default. Every other key is required and no key
 * may appear twice. Keys this build does not know are skipped at every level, so that a newer
 * peer can add optional fields; a field an older peer must not ignore needs a new
 * PROTO_VERSION. dtype and state travel as the numbers of proto_dtype_t and
 * proto_slot_state_t: those enum values are wire values and are never renumbered.
 *
 * Bounds beyond proto.h's: stage names (hello stage, roster stage, job origin and route) are
 * 1..PROTO_NAME_MAX-1 bytes of [a-z0-9_]; err_msg is free text without NUL bytes; every slot
 * index (hello, ready, heartbeat, roster entries, tensor pool) is below PROTO_MAX_SLOTS;
 * hello pid >= 1; a roster names each slot once; a tensor's off + bytes fits 64 bits.
 *
 * Decoding reads a frame twice. frame_scan walks the bytes once, without recursion or
 * allocation, and rejects anything but exactly one complete object nested at most
 * PROTO_MAX_DEPTH deep whose every container declares no more elements than there are bytes
 * left: msgpack-c allocates room for a container's declared count before it reads any element,
 * so five bytes declaring 2^32 elements would otherwise ask for 100 GB. After the scan
 * msgpack_unpack_next builds the object tree (its allocations now bounded by a small multiple of
 * the frame size), and the tables copy it into the struct. msgpack_unpack_next references str
 * and bin payloads in its input instead of copying them into its zone, so job params point into
 * the caller's `data` itself and stay valid exactly as long as it does (test_proto checks this,
 * and the decoder refuses a params pointer outside the frame rather than hand out one into the
 * freed zone). */
#include "proto.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROTO_PATH_MAX 64 /* "roster.slots[127].replica", "job.tensors[15].shape[4]" */
#define PROTO_FIELDS_MAX 32 /* bits in a table_decode seen-mask */

typedef struct {
    char *err;
    size_t errlen;
    const char *frame; /* the frame being decoded; NULL while encoding */
    size_t frame_size;
} proto_ctx_t;

static int proto_fail(proto_ctx_t *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int proto_fail(proto_ctx_t *ctx, const char *fmt, ...)
{
    if (ctx->err != NULL && ctx->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->err, ctx->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Names a field for error messages, such as "job.tensors[3].shape". The longest path the tables
 * can make fits PROTO_PATH_MAX; were one cut short, only a message would be. */
static void path_format(char *dst, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void path_format(char *dst, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, len, fmt, ap);
    va_end(ap);
}

/* ---- names ---- */

static const char *const proto_dtype_names[PROTO_DTYPE_COUNT] = {
    [PROTO_DTYPE_F32] = "f32",       [PROTO_DTYPE_BF16] = "bf16", [PROTO_DTYPE_F16] = "f16",
    [PROTO_DTYPE_F8E4M3] = "f8e4m3", [PROTO_DTYPE_U8] = "u8",     [PROTO_DTYPE_I32] = "i32",
    [PROTO_DTYPE_I64] = "i64",
};

static const size_t proto_dtype_sizes[PROTO_DTYPE_COUNT] = {
    [PROTO_DTYPE_F32] = 4,    [PROTO_DTYPE_BF16] = 2, [PROTO_DTYPE_F16] = 2, [PROTO_DTYPE_F8E4M3] = 1,
    [PROTO_DTYPE_U8] = 1,     [PROTO_DTYPE_I32] = 4,  [PROTO_DTYPE_I64] = 8,
};

size_t proto_dtype_size(int dtype)
{
    return dtype >= 0 && dtype < PROTO_DTYPE_COUNT ? proto_dtype_sizes[dtype] : 0;
}

const char *proto_dtype_name(int dtype)
{
    return dtype >= 0 && dtype < PROTO_DTYPE_COUNT ? proto_dtype_names[dtype] : "?";
}

/* ---- tables ---- */

typedef enum {
    PROTO_KIND_UINT,  /* unsigned integer member of `size` bytes, at most max */
    PROTO_KIND_INT,   /* signed integer member of `size` bytes, in [min, max] */
    PROTO_KIND_NAME,  /* char[size] stage name */
    PROTO_KIND_TEXT,  /* char[size] free text, may be empty */
    PROTO_KIND_BIN,   /* const uint8_t * borrowed bytes; length member at count_off, <= max */
    PROTO_KIND_NAMES, /* char[max][size] stage names; count member at count_off */
    PROTO_KIND_INTS,  /* int64_t[max], each >= min; count member at count_off */
    PROTO_KIND_MAPS,  /* struct[max] that elem describes; count member at count_off */
} proto_kind_t;

typedef struct proto_table proto_table_t;

typedef struct {
    const char *key;
    proto_kind_t kind;
    bool optional;            /* absent means zero or empty, and the encoder omits it then */
    size_t off;               /* the member */
    size_t size;              /* integer width, char array size, or array element size */
    int64_t min;              /* INT: lowest value; INTS: lowest element */
    uint64_t max;             /* UINT, INT: highest value; BIN: most bytes; lists: capacity */
    size_t count_off;         /* BIN and lists: the member holding the length */
    size_t count_size;
    const proto_table_t *elem; /* MAPS */
} proto_field_t;

struct proto_table {
    size_t size; /* of the struct, to step through an array of them */
    const proto_field_t *fields;
    size_t nfields;
    /* Invariants between fields; runs once every field has passed on its own. */
    int (*check)(const void *base, const char *path, proto_ctx_t *ctx);
};

#define MEMBER_SIZE(T, m) sizeof(((T *)0)->m)
#define FIELD_UINT(T, m, k, hi) \
    { .key = (k), .kind = PROTO_KIND_UINT, .off = offsetof(T, m), .size = MEMBER_SIZE(T, m), \
      .max = (hi) }
#define FIELD_INT(T, m, k, lo, hi, opt) \
    { .key = (k), .kind = PROTO_KIND_INT, .optional = (opt), .off = offsetof(T, m), \
      .size = MEMBER_SIZE(T, m), .min = (lo), .max = (hi) }
#define FIELD_NAME(T, m, k) \
    { .key = (k), .kind = PROTO_KIND_NAME, .off = offsetof(T, m), .size = MEMBER_SIZE(T, m) }
#define FIELD_TEXT(T, m, k, opt) \
    { .key = (k), .kind = PROTO_KIND_TEXT, .optional = (opt), .off = offsetof(T, m), \
      .size = MEMBER_SIZE(T, m) }
#define FIELD_BIN(T, m, n, k, hi, opt) \
    { .key = (k), .kind = PROTO_KIND_BIN, .optional = (opt), .off = offsetof(T, m), \
      .size = MEMBER_SIZE(T, m), .max = (hi), .count_off = offsetof(T, n), \
      .count_size = MEMBER_SIZE(T, n) }
#define FIELD_LIST(T, m, n, k, knd, lo, tbl) \
    { .key = (k), .kind = (knd), .off = offsetof(T, m), .size = MEMBER_SIZE(T, m[0]), \
      .min = (lo), .max = MEMBER_SIZE(T, m) / MEMBER_SIZE(T, m[0]), .count_off = offsetof(T, n), \
      .count_size = MEMBER_SIZE(T, n), .elem = (tbl) }
#define TABLE(T, f, chk) \
    { .size = sizeof(T), .fields = (f), .nfields = sizeof(f) / sizeof((f)[0]), .check = (chk) }
#define FIELDS_FIT(f) \
    _Static_assert(sizeof(f) / sizeof((f)[0]) <= PROTO_FIELDS_MAX, #f " has too many fields")

static int tensor_check(const void *base, const char *path, proto_ctx_t *ctx);
static int roster_check(const void *base, const char *path, proto_ctx_t *ctx);

static const proto_field_t hello_fields[] = {
    FIELD_NAME(proto_hello_t, stage, "stage"),
    FIELD_UINT(proto_hello_t, slot, "slot", PROTO_MAX_SLOTS - 1),
    FIELD_UINT(proto_hello_t, gen, "gen", UINT32_MAX),
    FIELD_INT(proto_hello_t, pid, "pid", 1, INT32_MAX, false),
};

static const proto_field_t ready_fields[] = {
    FIELD_UINT(proto_ready_t, slot, "slot", PROTO_MAX_SLOTS - 1),
    FIELD_UINT(proto_ready_t, gen, "gen", UINT32_MAX),
};

static const proto_field_t heartbeat_fields[] = {
    FIELD_UINT(proto_heartbeat_t, slot, "slot", PROTO_MAX_SLOTS - 1),
    FIELD_UINT(proto_heartbeat_t, gen, "gen", UINT32_MAX),
    FIELD_UINT(proto_heartbeat_t, jobs_done, "jobs_done", UINT64_MAX),
    FIELD_UINT(proto_heartbeat_t, jobs_failed, "jobs_failed", UINT64_MAX),
    FIELD_UINT(proto_heartbeat_t, jobs_dropped, "jobs_dropped", UINT64_MAX),
    FIELD_UINT(proto_heartbeat_t, inflight, "inflight", UINT32_MAX),
    FIELD_UINT(proto_heartbeat_t, busy_us, "busy_us", UINT64_MAX),
    FIELD_UINT(proto_heartbeat_t, pool_used, "pool_used", UINT64_MAX),
    FIELD_UINT(proto_heartbeat_t, pool_capacity, "pool_capacity", UINT64_MAX),
    FIELD_UINT(proto_heartbeat_t, draining, "draining", 1),
};

static const proto_field_t roster_entry_fields[] = {
    FIELD_UINT(proto_roster_entry_t, slot, "slot", PROTO_MAX_SLOTS - 1),
    FIELD_NAME(proto_roster_entry_t, stage, "stage"),
    FIELD_UINT(proto_roster_entry_t, replica, "replica", UINT32_MAX),
    FIELD_UINT(proto_roster_entry_t, gen, "gen", UINT32_MAX),
    /* The last proto_slot_state_t: a new state must move this bound. */
    FIELD_UINT(proto_roster_entry_t, state, "state", PROTO_SLOT_RETIRING),
};
static const proto_table_t roster_entry_table = TABLE(proto_roster_entry_t, roster_entry_fields, NULL);

static const proto_field_t roster_fields[] = {
    FIELD_UINT(proto_roster_t, seq, "seq", UINT64_MAX),
    FIELD_LIST(proto_roster_t, entries, n, "slots", PROTO_KIND_MAPS, 0, &roster_entry_table),
};

static const proto_field_t tensor_fields[] = {
    FIELD_UINT(proto_tensor_ref_t, pool, "pool", PROTO_MAX_SLOTS - 1),
    FIELD_UINT(proto_tensor_ref_t, gen, "gen", UINT32_MAX),
    FIELD_UINT(proto_tensor_ref_t, offset, "off", UINT64_MAX),
    FIELD_UINT(proto_tensor_ref_t, bytes, "bytes", UINT64_MAX),
    FIELD_INT(proto_tensor_ref_t, device, "dev", -1, INT32_MAX, false),
    FIELD_UINT(proto_tensor_ref_t, dtype, "dtype", PROTO_DTYPE_COUNT - 1),
    FIELD_LIST(proto_tensor_ref_t, shape, ndim, "shape", PROTO_KIND_INTS, 0, NULL),
};
static const proto_table_t tensor_table = TABLE(proto_tensor_ref_t, tensor_fields, tensor_check);

static const proto_field_t job_fields[] = {
    FIELD_UINT(proto_job_t, id, "id", UINT64_MAX),
    FIELD_UINT(proto_job_t, attempt, "attempt", UINT32_MAX),
    FIELD_UINT(proto_job_t, to_gen, "to_gen", UINT32_MAX),
    FIELD_NAME(proto_job_t, origin, "origin"),
    FIELD_UINT(proto_job_t, origin_slot, "origin_slot", PROTO_MAX_SLOTS - 1),
    FIELD_UINT(proto_job_t, origin_gen, "origin_gen", UINT32_MAX),
    FIELD_LIST(proto_job_t, route, n_route, "route", PROTO_KIND_NAMES, 0, NULL),
    FIELD_LIST(proto_job_t, tensors, n_tensors, "tensors", PROTO_KIND_MAPS, 0, &tensor_table),
    FIELD_INT(proto_job_t, error, "err", INT32_MIN, INT32_MAX, true),
    FIELD_TEXT(proto_job_t, error_msg, "err_msg", true),
    FIELD_BIN(proto_job_t, params, params_len, "params", PROTO_MAX_PARAMS, true),
};

FIELDS_FIT(hello_fields);
FIELDS_FIT(ready_fields);
FIELDS_FIT(heartbeat_fields);
FIELDS_FIT(roster_entry_fields);
FIELDS_FIT(roster_fields);
FIELDS_FIT(tensor_fields);
FIELDS_FIT(job_fields);

static const proto_table_t hello_table = TABLE(proto_hello_t, hello_fields, NULL);
static const proto_table_t ready_table = TABLE(proto_ready_t, ready_fields, NULL);
static const proto_table_t heartbeat_table = TABLE(proto_heartbeat_t, heartbeat_fields, NULL);
static const proto_table_t roster_table = TABLE(proto_roster_t, roster_fields, roster_check);
static const proto_table_t job_table = TABLE(proto_job_t, job_fields, NULL);

/* Indexed by proto_msg_type_t; every struct sits at the start of proto_msg_t.u. */
#define PROTO_MSG_LAST PROTO_MSG_JOB
static const struct {
    const char *name;
    const proto_table_t *table; /* NULL: the message carries nothing but "v" and "t" */
} proto_messages[PROTO_MSG_LAST + 1] = {
    [PROTO_MSG_HELLO] = {"hello", &hello_table},
    [PROTO_MSG_READY] = {"ready", &ready_table},
    [PROTO_MSG_HEARTBEAT] = {"heartbeat", &heartbeat_table},
    [PROTO_MSG_ROSTER] = {"roster", &roster_table},
    [PROTO_MSG_DRAIN] = {"drain", NULL},
    [PROTO_MSG_SHUTDOWN] = {"shutdown", NULL},
    [PROTO_MSG_JOB] = {"job", &job_table},
};

const char *proto_msg_type_name(int type)
{
    if (type < PROTO_MSG_HELLO || type > PROTO_MSG_LAST)
        return "?";
    return proto_messages[type].name;
}

/* ---- members of any integer width ---- */

static uint64_t load_uint(const void *p, size_t size)
{
    switch (size) {
    case 1: { uint8_t v; memcpy(&v, p, 1); return v; }
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

static int64_t load_int(const void *p, size_t size)
{
    switch (size) {
    case 1: { int8_t v; memcpy(&v, p, 1); return v; }
    case 2: { int16_t v; memcpy(&v, p, 2); return v; }
    case 4: { int32_t v; memcpy(&v, p, 4); return v; }
    default: { int64_t v; memcpy(&v, p, 8); return v; }
    }
}

/* The callers have checked that v fits in size bytes. */
static void store_uint(void *p, size_t size, uint64_t v)
{
    switch (size) {
    case 1: { uint8_t w = (uint8_t)v; memcpy(p, &w, 1); break; }
    case 2: { uint16_t w = (uint16_t)v; memcpy(p, &w, 2); break; }
    case 4: { uint32_t w = (uint32_t)v; memcpy(p, &w, 4); break; }
    default: memcpy(p, &v, 8); break;
    }
}

static void store_int(void *p, size_t size, int64_t v)
{
    switch (size) {
    case 1: { int8_t w = (int8_t)v; memcpy(p, &w, 1); break; }
    case 2: { int16_t w = (int16_t)v; memcpy(p, &w, 2); break; }
    case 4: { int32_t w = (int32_t)v; memcpy(p, &w, 4); break; }
    default: memcpy(p, &v, 8); break;
    }
}

static uint64_t uint_limit(size_t size)
{
    return size >= 8 ? UINT64_MAX : (UINT64_C(1) << (8 * size)) - 1;
}

static int64_t int_limit(size_t size)
{
    return size >= 8 ? INT64_MAX : (INT64_C(1) << (8 * size - 1)) - 1;
}

/* ---- checks shared by encode and decode ---- */

static int check_name(const char *s, size_t cap, const char *path, proto_ctx_t *ctx)
{
    size_t len = strnlen(s, cap);
    if (len == cap)
        return proto_fail(ctx, "%s: name longer than %zu bytes", path, cap - 1);
    if (len == 0)
        return proto_fail(ctx, "%s: empty name", path);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return proto_fail(ctx, "%s: byte 0x%02x at %zu is not one of [a-z0-9_]", path, c, i);
    }
    return 0;
}

static int table_check(const proto_table_t *t, const void *base, const char *path, proto_ctx_t *ctx);

/* Recursion follows the tables (two levels at most), never the input. */
static int field_check(const proto_field_t *f, const char *b, const char *fp, proto_ctx_t *ctx)
{
    const char *m = b + f->off;
    uint64_t n = 0;
    char ip[PROTO_PATH_MAX];

    if (f->kind == PROTO_KIND_BIN || f->kind == PROTO_KIND_NAMES || f->kind == PROTO_KIND_INTS ||
        f->kind == PROTO_KIND_MAPS) {
        n = load_uint(b + f->count_off, f->count_size);
        if (n > f->max)
            return proto_fail(ctx, "%s: %" PRIu64 " %s, more than %" PRIu64, fp, n,
                              f->kind == PROTO_KIND_BIN ? "bytes" : "entries", f->max);
    }
    switch (f->kind) {
    case PROTO_KIND_UINT: {
        uint64_t v = load_uint(m, f->size);
        if (v > f->max)
            return proto_fail(ctx, "%s: %" PRIu64 " is above %" PRIu64, fp, v, f->max);
        return 0;
    }
    case PROTO_KIND_INT: {
        int64_t v = load_int(m, f->size);
        if (v < f->min || v > (int64_t)f->max)
            return proto_fail(ctx, "%s: %" PRId64 " is outside [%" PRId64 ", %" PRIu64 "]", fp, v,
                              f->min, f->max);
        return 0;
    }
    case PROTO_KIND_NAME:
        return check_name(m, f->size, fp, ctx);
    case PROTO_KIND_TEXT:
        if (strnlen(m, f->size) == f->size)
            return proto_fail(ctx, "%s: text longer than %zu bytes", fp, f->size - 1);
        return 0;
    case PROTO_KIND_BIN: {
        const uint8_t *p;
        memcpy(&p, m, sizeof p);
        if (n > 0 && p == NULL)
            return proto_fail(ctx, "%s: %" PRIu64 " bytes at a NULL pointer", fp, n);
        return 0;
    }
    case PROTO_KIND_NAMES:
        for (uint64_t i = 0; i < n; i++) {
            path_format(ip, sizeof ip, "%s[%" PRIu64 "]", fp, i);
            if (check_name(m + i * f->size, f->size, ip, ctx) != 0)
                return -1;
        }
        return 0;
    case PROTO_KIND_INTS:
        for (uint64_t i = 0; i < n; i++) {
            int64_t v = load_int(m + i * f->size, f->size);
            if (v < f->min)
                return proto_fail(ctx, "%s[%" PRIu64 "]: %" PRId64 " is below %" PRId64, fp, i, v,
                                  f->min);
        }
        return 0;
    case PROTO_KIND_MAPS:
        for (uint64_t i = 0; i < n; i++) {
            path_format(ip, sizeof ip, "%s[%" PRIu64 "]", fp, i);
            if (table_check(f->elem, m + i * f->elem->size, ip, ctx) != 0)
                return -1;
        }
        return 0;
    }
    return proto_fail(ctx, "%s: field kind %d has no check", fp, (int)f->kind);
}

static int table_check(const proto_table_t *t, const void *base, const char *path, proto_ctx_t *ctx)
{
    for (size_t i = 0; i < t->nfields; i++) {
        char fp[PROTO_PATH_MAX];
        path_format(fp, sizeof fp, "%s.%s", path, t->fields[i].key);
        if (field_check(&t->fields[i], base, fp, ctx) != 0)
            return -1;
    }
    return t->check != NULL ? t->check(base, path, ctx) : 0;
}

/* dtype and every dim have passed their own bounds. A zero dim makes the tensor empty however
 * large the others are, so it is looked for before multiplying. */
static int tensor_check(const void *base, const char *path, proto_ctx_t *ctx)
{
    const proto_tensor_ref_t *t = base;
    uint64_t elems = 1, want, end;

    for (unsigned i = 0; i < t->ndim; i++)
        if (t->shape[i] == 0)
            elems = 0;
    for (unsigned i = 0; i < t->ndim && elems != 0; i++)
        if (__builtin_mul_overflow(elems, (uint64_t)t->shape[i], &elems))
            return proto_fail(ctx, "%s.shape: element count overflows 64 bits", path);
    if (__builtin_mul_overflow(elems, (uint64_t)proto_dtype_size(t->dtype), &want))
        return proto_fail(ctx, "%s.shape: size in bytes overflows 64 bits", path);
    if (want != t->bytes)
        return proto_fail(ctx,
                          "%s.bytes: %" PRIu64 ", but %" PRIu64 " elements of %s take %" PRIu64,
                          path, t->bytes, elems, proto_dtype_name(t->dtype), want);
    if (__builtin_add_overflow(t->offset, t->bytes, &end))
        return proto_fail(ctx, "%s.off: %" PRIu64 " + %" PRIu64 " bytes overflows 64 bits", path,
                          t->offset, t->bytes);
    return 0;
}

/* Stages index the roster by slot: one slot twice would make the table mean two things. */
static int roster_check(const void *base, const char *path, proto_ctx_t *ctx)
{
    const proto_roster_t *r = base;
    bool seen[PROTO_MAX_SLOTS] = {false};

    for (uint32_t i = 0; i < r->n; i++) {
        uint32_t s = r->entries[i].slot;
        if (s >= PROTO_MAX_SLOTS)
            return proto_fail(ctx, "%s.slots[%" PRIu32 "].slot: %" PRIu32 " out of range", path, i, s);
        if (seen[s])
            return proto_fail(ctx, "%s.slots[%" PRIu32 "].slot: slot %" PRIu32 " listed twice",
                              path, i, s);
        seen[s] = true;
    }
    return 0;
}

/* ---- encode ---- */

/* The sbuffer's write, remembering a failure: msgpack_pack_* hand it on in return values that
 * would otherwise have to be checked at every call; proto_encode checks `failed` once. */
typedef struct {
    msgpack_sbuffer sbuf;
    bool failed;
} proto_out_t;

static int proto_out_write(void *data, const char *buf, size_t len)
{
    proto_out_t *o = data;
    if (o->failed || msgpack_sbuffer_write(&o->sbuf, buf, len) != 0) {
        o->failed = true;
        return -1;
    }
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

static bool field_is_default(const proto_field_t *f, const char *b)
{
    switch (f->kind) {
    case PROTO_KIND_UINT:
        return load_uint(b + f->off, f->size) == 0;
    case PROTO_KIND_INT:
        return load_int(b + f->off, f->size) == 0;
    case PROTO_KIND_NAME:
    case PROTO_KIND_TEXT:
        return b[f->off] == '\0';
    default:
        return load_uint(b + f->count_off, f->count_size) == 0;
    }
}

static size_t table_count_keys(const proto_table_t *t, const char *b)
{
    size_t n = 0;
    for (size_t i = 0; i < t->nfields; i++)
        if (!t->fields[i].optional || !field_is_default(&t->fields[i], b))
            n++;
    return n;
}

/* Packs the keys and values only; the caller has packed the map header. table_check has
 * passed, so every count and string is within its array. */
static void table_pack(msgpack_packer *pk, const proto_table_t *t, const char *b)
{
    for (size_t i = 0; i < t->nfields; i++) {
        const proto_field_t *f = &t->fields[i];
        const char *m = b + f->off;
        uint64_t n = 0;

        if (f->optional && field_is_default(f, b))
            continue;
        pack_str(pk, f->key, strlen(f->key));
        if (f->kind == PROTO_KIND_BIN || f->kind == PROTO_KIND_NAMES ||
            f->kind == PROTO_KIND_INTS || f->kind == PROTO_KIND_MAPS)
            n = load_uint(b + f->count_off, f->count_size);
        switch (f->kind) {
        case PROTO_KIND_UINT:
            msgpack_pack_uint64(pk, load_uint(m, f->size));
            break;
        case PROTO_KIND_INT:
            msgpack_pack_int64(pk, load_int(m, f->size));
            break;
        case PROTO_KIND_NAME:
        case PROTO_KIND_TEXT:
            pack_str(pk, m, strnlen(m, f->size));
            break;
        case PROTO_KIND_BIN: {
            const uint8_t *p;
            memcpy(&p, m, sizeof p);
            msgpack_pack_bin(pk, (size_t)n);
            if (n > 0)
                msgpack_pack_bin_body(pk, p, (size_t)n);
            break;
        }
        case PROTO_KIND_NAMES:
            msgpack_pack_array(pk, (size_t)n);
            for (uint64_t j = 0; j < n; j++)
                pack_str(pk, m + j * f->size, strnlen(m + j * f->size, f->size));
            break;
        case PROTO_KIND_INTS:
            msgpack_pack_array(pk, (size_t)n);
            for (uint64_t j = 0; j < n; j++)
                msgpack_pack_int64(pk, load_int(m + j * f->size, f->size));
            break;
        case PROTO_KIND_MAPS:
            msgpack_pack_array(pk, (size_t)n);
            for (uint64_t j = 0; j < n; j++) {
                const char *e = m + j * f->elem->size;
                msgpack_pack_map(pk, table_count_keys(f->elem, e));
                table_pack(pk, f->elem, e);
            }
            break;
        }
    }
}

int proto_encode(const proto_msg_t *msg, proto_buf_t *out, char *err, size_t errlen)
{
    proto_ctx_t ctx = {.err = err, .errlen = errlen};
    const proto_table_t *table;
    const char *name;
    proto_out_t o;
    msgpack_packer pk;

    if (out == NULL)
        return proto_fail(&ctx, "proto_encode: no output buffer");
    out->data = NULL;
    out->size = 0;
    if (msg == NULL)
        return proto_fail(&ctx, "proto_encode: no message");
    if (msg->type < PROTO_MSG_HELLO || msg->type > PROTO_MSG_LAST)
        return proto_fail(&ctx, "cannot encode unknown message type %d", (int)msg->type);
    name = proto_messages[msg->type].name;
    table = proto_messages[msg->type].table;
    if (table != NULL && table_check(table, &msg->u, name, &ctx) != 0)
        return -1;

    msgpack_sbuffer_init(&o.sbuf);
    o.failed = false;
    msgpack_packer_init(&pk, &o, proto_out_write);
    msgpack_pack_map(&pk, 2 + (table != NULL ? table_count_keys(table, (const char *)&msg->u) : 0));
    pack_str(&pk, "v", 1);
    msgpack_pack_uint64(&pk, PROTO_VERSION);
    pack_str(&pk, "t", 1);
    pack_str(&pk, name, strlen(name));
    if (table != NULL)
        table_pack(&pk, table, (const char *)&msg->u);

    if (o.failed) {
        msgpack_sbuffer_destroy(&o.sbuf);
        return proto_fail(&ctx, "%s: out of memory while encoding", name);
    }
    /* The bounds keep every message well under the limit; should they ever stop doing so, the
     * sender hears about it rather than every receiver dropping the frame. */
    if (o.sbuf.size > PROTO_MAX_FRAME) {
        size_t size = o.sbuf.size;
        msgpack_sbuffer_destroy(&o.sbuf);
        return proto_fail(&ctx, "%s: encodes to %zu bytes, more than PROTO_MAX_FRAME (%d)", name,
                          size, PROTO_MAX_FRAME);
    }
    out->size = o.sbuf.size;
    out->data = msgpack_sbuffer_release(&o.sbuf);
    return 0;
}

void proto_buf_free(proto_buf_t *buf)
{
    if (buf == NULL)
        return;
    free(buf->data); /* the sbuffer's realloc'd storage */
    buf->data = NULL;
    buf->size = 0;
}

/* ---- decode ---- */

static uint64_t be_load(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* See the top of the file for why this walk precedes msgpack_unpack_next. Invariant: every
 * object still to be read takes at least one byte, so pending <= size - pos throughout. */
static int frame_scan(const uint8_t *p, size_t size, proto_ctx_t *ctx)
{
    uint64_t left[PROTO_MAX_DEPTH + 1]; /* objects still to read per open container; [0]: the frame */
    unsigned depth = 0;
    uint64_t pending = 1;               /* sum of left[] */
    size_t pos = 0;

    left[0] = 1;
    while (pending > 0) {
        size_t at = pos, lenbytes = 0, extra = 0;
        uint64_t skip = 0, count = 0;
        bool container = false, map = false;
        uint8_t c;

        while (left[depth] == 0)
            depth--;
        if (pos >= size)
            return proto_fail(ctx, "frame truncated: it ends inside an object");
        c = p[pos++];
        left[depth]--;
        pending--;

        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            /* fixint, nil, bool: the type byte is the whole object */
        } else if (c <= 0x8f) {
            container = map = true;
            count = c & 0x0f;
        } else if (c <= 0x9f) {
            container = true;
            count = c & 0x0f;
        } else if (c <= 0xbf) {
            skip = c & 0x1f;
        } else {
            switch (c) {
            case 0xc4: case 0xd9: lenbytes = 1; break;            /* bin 8, str 8 */
            case 0xc5: case 0xda: lenbytes = 2; break;            /* bin 16, str 16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;            /* bin 32, str 32 */
            case 0xc7: lenbytes = 1; extra = 1; break;            /* ext 8 and its type byte */
            case 0xc8: lenbytes = 2; extra = 1; break;
            case 0xc9: lenbytes = 4; extra = 1; break;
            case 0xca: skip = 4; break;                           /* float 32 */
            case 0xcb: skip = 8; break;                           /* float 64 */
            case 0xcc: case 0xd0: skip = 1; break;                /* (u)int 8 */
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                           /* fixext 1 with its type */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: container = true; lenbytes = 2; break;     /* array 16 */
            case 0xdd: container = true; lenbytes = 4; break;
            case 0xde: container = map = true; lenbytes = 2; break; /* map 16 */
            case 0xdf: container = map = true; lenbytes = 4; break;
            default: /* 0xc1: never used */
                return proto_fail(ctx, "byte 0x%02x at offset %zu is not msgpack", c, at);
            }
        }
        if (lenbytes > 0) {
            if (size - pos < lenbytes)
                return proto_fail(ctx, "frame truncated: it ends inside a length");
            uint64_t v = be_load(p + pos, lenbytes);
            pos += lenbytes;
            if (container)
                count = v;
            else
                skip = v + extra;
        }
        if (skip > size - pos)
            return proto_fail(ctx, "frame truncated: a value at offset %zu runs %" PRIu64
                              " bytes past the end", at, skip - (size - pos));
        pos += (size_t)skip;
        if (!container)
            continue;
        if (map)
            count *= 2;
        if (depth >= PROTO_MAX_DEPTH)
            return proto_fail(ctx, "maps and arrays nested deeper than %d at offset %zu",
                              PROTO_MAX_DEPTH, at);
        if (count > size - pos - pending)
            return proto_fail(ctx, "%s at offset %zu declares %" PRIu64 " %s, more than the %zu"
                              " bytes left could hold", map ? "map" : "array", at,
                              map ? count / 2 : count, map ? "entries" : "elements",
                              size - pos);
        if (count > 0) {
            left[++depth] = count;
            pending += count;
        }
    }
    if (pos != size)
        return proto_fail(ctx, "%zu trailing bytes after the message", size - pos);
    return 0;
}

static const char *mp_type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "a negative integer";
    case MSGPACK_OBJECT_FLOAT32: return "a float";
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_BIN: return "bin data";
    case MSGPACK_OBJECT_EXT: return "an ext value";
    }
    return "an unknown msgpack type";
}

static int wrong_type(proto_ctx_t *ctx, const char *fp, const char *want, const msgpack_object *o)
{
    return proto_fail(ctx, "%s: expected %s, got %s", fp, want, mp_type_name(o->type));
}

static int decode_uint(const msgpack_object *o, size_t size, void *m, const char *fp,
                       proto_ctx_t *ctx)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return proto_fail(ctx, "%s: %" PRId64 " is negative", fp, o->via.i64);
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return wrong_type(ctx, fp, "an integer", o);
    if (o->via.u64 > uint_limit(size))
        return proto_fail(ctx, "%s: %" PRIu64 " does not fit in %zu bits", fp, o->via.u64, 8 * size);
    store_uint(m, size, o->via.u64);
    return 0;
}

static int decode_int(const msgpack_object *o, size_t size, void *m, const char *fp,
                      proto_ctx_t *ctx)
{
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)int_limit(size))
            return proto_fail(ctx, "%s: %" PRIu64 " does not fit in a signed %zu-bit integer", fp,
                              o->via.u64, 8 * size);
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        if (o->via.i64 < -int_limit(size) - 1)
            return proto_fail(ctx, "%s: %" PRId64 " does not fit in a signed %zu-bit integer", fp,
                              o->via.i64, 8 * size);
        v = o->via.i64;
    } else {
        return wrong_type(ctx, fp, "an integer", o);
    }
    store_int(m, size, v);
    return 0;
}

/* Copies a string into char[cap]: a NUL inside would cut it short without anyone noticing. */
static int decode_str(const msgpack_object *o, char *m, size_t cap, const char *fp,
                      proto_ctx_t *ctx)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return wrong_type(ctx, fp, "a string", o);
    if (o->via.str.size >= cap)
        return proto_fail(ctx, "%s: %" PRIu32 " bytes, longer than %zu", fp, o->via.str.size, cap - 1);
    if (o->via.str.size > 0 && memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL)
        return proto_fail(ctx, "%s: contains a NUL byte", fp);
    if (o->via.str.size > 0)
        memcpy(m, o->via.str.ptr, o->via.str.size);
    m[o->via.str.size] = '\0';
    return 0;
}

static int table_decode(const proto_table_t *t, const msgpack_object_map *map, char *base,
                        const char *path, proto_ctx_t *ctx);

/* Fills one member from its wire value, checking what storing it needs (type, width, room);
 * the bounds proper are table_check's, run afterwards over the whole struct. */
static int field_decode(const proto_field_t *f, const msgpack_object *o, char *b, const char *fp,
                        proto_ctx_t *ctx)
{
    char *m = b + f->off;
    char ip[PROTO_PATH_MAX];
    uint32_t n;

    switch (f->kind) {
    case PROTO_KIND_UINT:
        return decode_uint(o, f->size, m, fp, ctx);
    case PROTO_KIND_INT:
        return decode_int(o, f->size, m, fp, ctx);
    case PROTO_KIND_NAME:
    case PROTO_KIND_TEXT:
        return decode_str(o, m, f->size, fp, ctx);
    case PROTO_KIND_BIN: {
        const uint8_t *p = NULL;
        if (o->type != MSGPACK_OBJECT_BIN)
            return wrong_type(ctx, fp, "bin data", o);
        n = o->via.bin.size;
        if (n > f->max)
            return proto_fail(ctx, "%s: %" PRIu32 " bytes, more than %" PRIu64, fp, n, f->max);
        if (n > 0) {
            uintptr_t lo = (uintptr_t)ctx->frame, at = (uintptr_t)o->via.bin.ptr;
            p = (const uint8_t *)o->via.bin.ptr;
            if (at < lo || at - lo > ctx->frame_size || n > ctx->frame_size - (at - lo))
                return proto_fail(ctx, "%s: msgpack-c copied the bytes out of the frame, so they "
                                  "cannot be borrowed from it", fp);
        }
        memcpy(m, &p, sizeof p);
        store_uint(b + f->count_off, f->count_size, n);
        return 0;
    }
    default:
        break;
    }

    if (o->type != MSGPACK_OBJECT_ARRAY)
        return wrong_type(ctx, fp, "an array", o);
    n = o->via.array.size;
    if (n > f->max)
        return proto_fail(ctx, "%s: %" PRIu32 " entries, more than %" PRIu64, fp, n, f->max);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        int rc;
        path_format(ip, sizeof ip, "%s[%" PRIu32 "]", fp, i);
        if (f->kind == PROTO_KIND_NAMES) {
            rc = decode_str(e, m + i * f->size, f->size, ip, ctx);
        } else if (f->kind == PROTO_KIND_INTS) {
            rc = decode_int(e, f->size, m + i * f->size, ip, ctx);
        } else if (e->type != MSGPACK_OBJECT_MAP) {
            rc = wrong_type(ctx, ip, "a map", e);
        } else {
            rc = table_decode(f->elem, &e->via.map, m + i * f->elem->size, ip, ctx);
        }
        if (rc != 0)
            return -1;
    }
    store_uint(b + f->count_off, f->count_size, n);
    return 0;
}

static int table_decode(const proto_table_t *t, const msgpack_object_map *map, char *base,
                        const char *path, proto_ctx_t *ctx)
{
    uint32_t seen = 0;

    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key;
        size_t j;
        char fp[PROTO_PATH_MAX];

        if (k->type != MSGPACK_OBJECT_STR)
            return proto_fail(ctx, "%s: a key is %s, not a string", path, mp_type_name(k->type));
        for (j = 0; j < t->nfields; j++)
            if (strlen(t->fields[j].key) == k->via.str.size &&
                memcmp(t->fields[j].key, k->via.str.ptr, k->via.str.size) == 0)
                break;
        if (j == t->nfields)
            continue; /* a newer peer's key */
        if (seen & (UINT32_C(1) << j))
            return proto_fail(ctx, "%s: key \"%s\" appears twice", path, t->fields[j].key);
        seen |= UINT32_C(1) << j;
        path_format(fp, sizeof fp, "%s.%s", path, t->fields[j].key);
        if (field_decode(&t->fields[j], &map->ptr[i].val, base, fp, ctx) != 0)
            return -1;
    }
    for (size_t j = 0; j < t->nfields; j++)
        if (!(seen & (UINT32_C(1) << j)) && !t->fields[j].optional)
            return proto_fail(ctx, "%s: missing key \"%s\"", path, t->fields[j].key);
    return 0;
}

/* Writes s as a quoted, printable, bounded string: it came from the peer and goes into a log. */
static void quote_str(char *out, size_t outlen, const char *s, size_t n)
{
    size_t o = 0, i;
    /* Each step writes at most 4 bytes; 8 spare leave room for `..."` and the NUL. */
    out[o++] = '"';
    for (i = 0; i < n && o + 8 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
    }
    if (i < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
}

static int key_is(const msgpack_object *k, const char *name)
{
    return k->via.str.size == strlen(name) && memcmp(k->via.str.ptr, name, k->via.str.size) == 0;
}

static int message_decode(const msgpack_object *top, proto_msg_t *msg, proto_ctx_t *ctx)
{
    const msgpack_object *v = NULL, *t = NULL;
    int type;

    if (top->type != MSGPACK_OBJECT_MAP)
        return proto_fail(ctx, "frame holds %s, not a map", mp_type_name(top->type));
    for (uint32_t i = 0; i < top->via.map.size; i++) {
        const msgpack_object *k = &top->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            return proto_fail(ctx, "a key is %s, not a string", mp_type_name(k->type));
        if (key_is(k, "v")) {
            if (v != NULL)
                return proto_fail(ctx, "key \"v\" appears twice");
            v = &top->via.map.ptr[i].val;
        } else if (key_is(k, "t")) {
            if (t != NULL)
                return proto_fail(ctx, "key \"t\" appears twice");
            t = &top->via.map.ptr[i].val;
        }
    }
    if (v == NULL)
        return proto_fail(ctx, "missing key \"v\" (protocol version)");
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
        (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 == 0))
        return proto_fail(ctx, "v: %" PRId64 " is not a protocol version", v->via.i64);
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return wrong_type(ctx, "v", "a positive integer", v);
    if (v->via.u64 != PROTO_VERSION)
        return proto_fail(ctx, "protocol version %" PRIu64 ", but this build speaks version %d",
                          v->via.u64, PROTO_VERSION);
    if (t == NULL)
        return proto_fail(ctx, "missing key \"t\" (message type)");
    if (t->type != MSGPACK_OBJECT_STR)
        return wrong_type(ctx, "t", "a string", t);
    for (type = PROTO_MSG_HELLO; type <= PROTO_MSG_LAST; type++)
        if (key_is(t, proto_messages[type].name))
            break;
    if (type > PROTO_MSG_LAST) {
        char q[48];
        quote_str(q, sizeof q, t->via.str.ptr, t->via.str.size);
        return proto_fail(ctx, "unknown message type %s", q);
    }

    msg->type = (proto_msg_type_t)type;
    const proto_table_t *table = proto_messages[type].table;
    const char *name = proto_messages[type].name;
    if (table == NULL)
        return 0;
    if (table_decode(table, &top->via.map, (char *)&msg->u, name, ctx) != 0)
        return -1;
    return table_check(table, &msg->u, name, ctx);
}

int proto_decode(const void *data, size_t size, proto_msg_t *msg, char *err, size_t errlen)
{
    proto_ctx_t ctx = {.err = err, .errlen = errlen, .frame = data, .frame_size = size};
    msgpack_unpacked up;
    msgpack_unpack_return r;
    size_t off = 0;
    int rc;

    if (msg == NULL)
        return proto_fail(&ctx, "proto_decode: no message to decode into");
    memset(msg, 0, sizeof *msg);
    if (size > PROTO_MAX_FRAME)
        return proto_fail(&ctx, "frame of %zu bytes is larger than PROTO_MAX_FRAME (%d)", size,
                          PROTO_MAX_FRAME);
    if (data == NULL || size == 0)
        return proto_fail(&ctx, "empty frame");
    if (frame_scan(data, size, &ctx) != 0)
        return -1;

    msgpack_unpacked_init(&up);
    r = msgpack_unpack_next(&up, data, size, &off);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR)
        rc = proto_fail(&ctx, "out of memory unpacking a %zu-byte frame", size);
    else if (r != MSGPACK_UNPACK_SUCCESS || off != size)
        rc = proto_fail(&ctx, "msgpack-c rejected a frame the scan accepted (%d at %zu of %zu)",
                        (int)r, off, size);
    else
        rc = message_decode(&up.data, msg, &ctx);
    msgpack_unpacked_destroy(&up);
    /* Nothing half-filled may be mistaken for a message, least of all a params pointer. */
    if (rc != 0)
        memset(msg, 0, sizeof *msg);
    return rc;
}
