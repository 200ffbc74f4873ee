/* test_proto: the wire protocol (ipc/proto.c). Round trips of every message at its bounds,
 * hand-built frames that break one rule each (decode must refuse them and name the field),
 * structs that break one rule each (encode must refuse them), and hostile byte strings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/proto.h"

#include "tests/common/proto_diff.h"

/* ---- messages at their bounds ---- */

/* A stage name of len bytes from [a-z0-9_], different for each seed. */
static void make_name(char *dst, size_t len, unsigned seed)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
    for (size_t i = 0; i < len; i++)
        dst[i] = alphabet[(seed * 7 + i * 13) % (sizeof alphabet - 1)];
    dst[len] = '\0';
}

static uint8_t big_params[PROTO_MAX_PARAMS];

static void fill_job_max(proto_msg_t *m, uint32_t params_len)
{
    proto_job_t *j = &m->u.job;

    memset(m, 0, sizeof *m);
    m->type = PROTO_MSG_JOB;
    j->id = UINT64_MAX;
    j->attempt = UINT32_MAX - 1;
    j->to_gen = 0xdeadbeefu;
    make_name(j->origin, PROTO_NAME_MAX - 1, 1);
    j->origin_slot = PROTO_MAX_SLOTS - 1;
    j->origin_gen = UINT32_MAX;
    j->n_route = PROTO_MAX_ROUTE;
    for (unsigned i = 0; i < PROTO_MAX_ROUTE; i++)
        make_name(j->route[i], PROTO_NAME_MAX - 1 - i, i + 2);
    j->n_tensors = PROTO_MAX_TENSORS;
    for (unsigned i = 0; i < PROTO_MAX_TENSORS; i++) {
        proto_tensor_ref_t *t = &j->tensors[i];
        uint64_t elems = 1;
        t->pool = PROTO_MAX_SLOTS - 1 - i;
        t->gen = UINT32_MAX - i;
        t->dtype = (uint8_t)(i % PROTO_DTYPE_COUNT);
        t->ndim = PROTO_MAX_DIMS;
        t->device = i % 3 == 0 ? -1 : (int32_t)i;
        t->shape[0] = i + 1;
        t->shape[1] = 2;
        t->shape[2] = 3;
        t->shape[3] = 1 + i % 4;
        t->shape[4] = 7;
        if (i == PROTO_MAX_TENSORS - 1) { /* a huge one: 2^50 bytes at 2^60 */
            t->dtype = PROTO_DTYPE_U8;
            t->shape[0] = INT64_C(1) << 20;
            t->shape[1] = INT64_C(1) << 20;
            t->shape[2] = INT64_C(1) << 10;
            t->shape[3] = 1;
            t->shape[4] = 1;
        }
        for (unsigned d = 0; d < PROTO_MAX_DIMS; d++)
            elems *= (uint64_t)t->shape[d];
        t->bytes = elems * proto_dtype_size(t->dtype);
        t->offset = (uint64_t)i << 60 >> 4;
    }
    j->error = INT32_MIN;
    for (unsigned k = 0; k < PROTO_ERROR_MAX - 1; k++)
        j->error_msg[k] = (char)(k % 17 == 16 ? 0xc3 : 0x20 + k % 0x5f); /* printable and high bytes */
    for (uint32_t k = 0; k < params_len; k++)
        big_params[k] = (uint8_t)(k * 131 + 7);
    j->params = big_params;
    j->params_len = params_len;
}

static void fill_roster_max(proto_msg_t *m)
{
    proto_roster_t *r = &m->u.roster;
    memset(m, 0, sizeof *m);
    m->type = PROTO_MSG_ROSTER;
    r->seq = UINT64_MAX;
    r->n = PROTO_MAX_SLOTS;
    for (uint32_t i = 0; i < PROTO_MAX_SLOTS; i++) {
        r->entries[i].slot = PROTO_MAX_SLOTS - 1 - i;
        make_name(r->entries[i].stage, 1 + i % (PROTO_NAME_MAX - 1), i);
        r->entries[i].replica = i * 7 + 1;
        r->entries[i].gen = i == 0 ? 0 : UINT32_MAX - i;
        r->entries[i].state = (uint8_t)(i % 6);
    }
}

/* Encodes, decodes, compares field by field, and checks that encoding is deterministic. */
static void assert_round_trip(const proto_msg_t *in)
{
    proto_msg_t *out = malloc(sizeof *out);
    proto_buf_t buf, again;
    char err[256] = "", why[128] = "";

    assert_non_null(out);
    if (proto_encode(in, &buf, err, sizeof err) != 0)
        fail_msg("encode %s: %s", proto_msg_type_name(in->type), err);
    assert_non_null(buf.data);
    assert_true(buf.size > 0 && buf.size <= PROTO_MAX_FRAME);
    if (proto_decode(buf.data, buf.size, out, err, sizeof err) != 0)
        fail_msg("decode %s: %s", proto_msg_type_name(in->type), err);
    if (msg_diff(in, out, why, sizeof why) != 0)
        fail_msg("round trip of %s changed %s", proto_msg_type_name(in->type), why);
    if (proto_encode(out, &again, err, sizeof err) != 0)
        fail_msg("re-encode %s: %s", proto_msg_type_name(in->type), err);
    assert_int_equal(again.size, buf.size);
    assert_memory_equal(again.data, buf.data, buf.size);
    proto_buf_free(&again);
    proto_buf_free(&buf);
    assert_null(buf.data);
    free(out);
}

static void test_round_trip_hello(void **state)
{
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = PROTO_MSG_HELLO;
    make_name(m.u.hello.stage, PROTO_NAME_MAX - 1, 3);
    m.u.hello.slot = PROTO_MAX_SLOTS - 1;
    m.u.hello.gen = UINT32_MAX;
    m.u.hello.pid = INT32_MAX;
    assert_round_trip(&m);
}

static void test_round_trip_ready(void **state)
{
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = PROTO_MSG_READY;
    m.u.ready.slot = 77;
    m.u.ready.gen = 0xfffffffeu;
    assert_round_trip(&m);
}

static void test_round_trip_heartbeat(void **state)
{
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = PROTO_MSG_HEARTBEAT;
    m.u.heartbeat = (proto_heartbeat_t){
        .slot = 5, .gen = UINT32_MAX, .jobs_done = UINT64_MAX, .jobs_failed = 1ull << 40,
        .jobs_dropped = 3, .inflight = UINT32_MAX, .busy_us = 1ull << 33, .pool_used = 12345,
        .pool_capacity = UINT64_MAX - 1, .draining = 1,
    };
    assert_round_trip(&m);
}

static void test_round_trip_roster_128(void **state)
{
    proto_msg_t *m = malloc(sizeof *m);
    assert_non_null(m);
    fill_roster_max(m);
    assert_round_trip(m);
    m->u.roster.n = 0; /* an empty table is a table too */
    assert_round_trip(m);
    free(m);
}

static void test_round_trip_drain_shutdown(void **state)
{
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = PROTO_MSG_DRAIN;
    assert_round_trip(&m);
    m.type = PROTO_MSG_SHUTDOWN;
    assert_round_trip(&m);
}

static void test_round_trip_job_max(void **state)
{
    proto_msg_t *m = malloc(sizeof *m);
    assert_non_null(m);
    fill_job_max(m, PROTO_MAX_PARAMS);
    assert_round_trip(m);
    free(m);
}

/* Scalars (ndim 0) take one element; a zero dim empties a tensor however large the rest. */
static void test_round_trip_job_edge_tensors(void **state)
{
    proto_msg_t *m = malloc(sizeof *m);
    assert_non_null(m);
    fill_job_max(m, 1);
    m->u.job.n_tensors = 2;
    m->u.job.tensors[0] = (proto_tensor_ref_t){.pool = 0, .gen = 1, .offset = 0, .bytes = 8,
                                               .device = -1, .dtype = PROTO_DTYPE_I64, .ndim = 0};
    m->u.job.tensors[1] = (proto_tensor_ref_t){.pool = 1, .gen = 1, .offset = UINT64_MAX,
                                               .bytes = 0, .device = 0, .dtype = PROTO_DTYPE_F32,
                                               .ndim = 3, .shape = {INT64_MAX, INT64_MAX, 0}};
    assert_round_trip(m);
    free(m);
}

/* Optional keys at their defaults stay off the wire and come back as defaults. */
static void test_job_optional_keys_omitted(void **state)
{
    proto_msg_t m, out;
    proto_buf_t buf;
    char err[256];

    memset(&m, 0, sizeof m);
    m.type = PROTO_MSG_JOB;
    m.u.job.id = 9;
    strcpy(m.u.job.origin, "ingress");
    assert_int_equal(proto_encode(&m, &buf, err, sizeof err), 0);
    assert_null(memmem(buf.data, buf.size, "\xa3" "err", 4));
    assert_null(memmem(buf.data, buf.size, "\xa7" "err_msg", 8));
    assert_null(memmem(buf.data, buf.size, "\xa6" "params", 7));
    assert_non_null(memmem(buf.data, buf.size, "\xa5" "route", 6)); /* required, even empty */
    assert_int_equal(proto_decode(buf.data, buf.size, &out, err, sizeof err), 0);
    assert_int_equal(out.u.job.error, 0);
    assert_string_equal(out.u.job.error_msg, "");
    assert_null(out.u.job.params);
    assert_int_equal(out.u.job.params_len, 0);
    assert_int_equal(out.u.job.n_route, 0);
    proto_buf_free(&buf);
}

/* proto.h promises that params borrow from the frame handed to proto_decode. */
static void test_job_params_borrow_from_frame(void **state)
{
    proto_msg_t *m = malloc(sizeof *m), *out = malloc(sizeof *out);
    proto_buf_t buf;
    char err[256];

    assert_non_null(m);
    assert_non_null(out);
    fill_job_max(m, 1000);
    assert_int_equal(proto_encode(m, &buf, err, sizeof err), 0);
    assert_int_equal(proto_decode(buf.data, buf.size, out, err, sizeof err), 0);
    assert_int_equal(out->u.job.params_len, 1000);
    assert_true(out->u.job.params >= (const uint8_t *)buf.data);
    assert_true(out->u.job.params + 1000 <= (const uint8_t *)buf.data + buf.size);
    /* and is the frame's bytes, not a copy made before this write */
    ((uint8_t *)out->u.job.params)[0] ^= 0xff;
    assert_int_equal(out->u.job.params[0], (uint8_t)(big_params[0] ^ 0xff));
    proto_buf_free(&buf);
    free(m);
    free(out);
}

static void test_dtype_and_type_names(void **state)
{
    static const struct { int dtype; size_t size; const char *name; } dtypes[] = {
        {PROTO_DTYPE_F32, 4, "f32"}, {PROTO_DTYPE_BF16, 2, "bf16"}, {PROTO_DTYPE_F16, 2, "f16"},
        {PROTO_DTYPE_F8E4M3, 1, "f8e4m3"}, {PROTO_DTYPE_U8, 1, "u8"}, {PROTO_DTYPE_I32, 4, "i32"},
        {PROTO_DTYPE_I64, 8, "i64"}, {PROTO_DTYPE_COUNT, 0, "?"}, {-1, 0, "?"}, {255, 0, "?"},
    };
    static const struct { int type; const char *name; } types[] = {
        {PROTO_MSG_HELLO, "hello"}, {PROTO_MSG_READY, "ready"}, {PROTO_MSG_HEARTBEAT, "heartbeat"},
        {PROTO_MSG_ROSTER, "roster"}, {PROTO_MSG_DRAIN, "drain"}, {PROTO_MSG_SHUTDOWN, "shutdown"},
        {PROTO_MSG_JOB, "job"}, {0, "?"}, {PROTO_MSG_JOB + 1, "?"}, {-7, "?"},
    };
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        assert_int_equal(proto_dtype_size(dtypes[i].dtype), dtypes[i].size);
        assert_string_equal(proto_dtype_name(dtypes[i].dtype), dtypes[i].name);
    }
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        assert_string_equal(proto_msg_type_name(types[i].type), types[i].name);
}

/* Every prefix of a job frame is refused, and leaves no half-filled message behind. Each
 * prefix sits in a buffer of exactly its size, so ASan sees any read past the end. */
static void check_prefixes(const proto_buf_t *full, size_t stride)
{
    proto_msg_t *out = malloc(sizeof *out);
    char err[256];
    assert_non_null(out);
    for (size_t len = 0; len < full->size; len += stride) {
        char *copy = malloc(len > 0 ? len : 1);
        assert_non_null(copy);
        memcpy(copy, full->data, len);
        err[0] = '\0';
        if (proto_decode(copy, len, out, err, sizeof err) != -1)
            fail_msg("a %zu-byte prefix of a %zu-byte frame decoded", len, full->size);
        assert_true(err[0] != '\0');
        assert_int_equal(out->type, 0);
        assert_null(out->u.job.params);
        free(copy);
    }
    free(out);
}

static void test_job_prefixes_rejected(void **state)
{
    proto_msg_t *m = malloc(sizeof *m);
    proto_buf_t buf;
    char err[256];

    assert_non_null(m);
    fill_job_max(m, 300);
    assert_int_equal(proto_encode(m, &buf, err, sizeof err), 0);
    check_prefixes(&buf, 1);
    proto_buf_free(&buf);
    fill_job_max(m, PROTO_MAX_PARAMS); /* too long to try every prefix; a sample of them */
    assert_int_equal(proto_encode(m, &buf, err, sizeof err), 0);
    check_prefixes(&buf, 997);
    proto_buf_free(&buf);
    free(m);
}

/* A NULL or tiny err is allowed: the caller may not want the reason. */
static void test_error_buffer_optional(void **state)
{
    proto_msg_t m;
    char tiny[4] = "xxx";
    assert_int_equal(proto_decode("\x01", 1, &m, NULL, 0), -1);
    assert_int_equal(proto_decode("\x01", 1, &m, tiny, sizeof tiny), -1);
    assert_int_equal(strlen(tiny), 3); /* truncated, still terminated */
    assert_int_equal(proto_decode("\x01", 1, NULL, tiny, sizeof tiny), -1);
    assert_int_equal(proto_encode(&m, NULL, NULL, 0), -1);
}

/* ---- hand-built frames, one broken rule each ---- */

typedef enum {
    MUT_NONE,
    MUT_OMIT,       /* leave the key out */
    MUT_DUP,        /* write the key twice */
    MUT_EXTRA,      /* add an unknown key (key's last part) holding a nested value */
    MUT_INTKEY,     /* add a key that is an integer */
    MUT_UINT,       /* value: u */
    MUT_INT,        /* value: i */
    MUT_FLOAT,      /* value: 1.5 */
    MUT_NIL,
    MUT_MAP,        /* value: {} */
    MUT_STR,        /* value: s */
    MUT_STRN,       /* value: n bytes of 'a' */
    MUT_STR_NUL,    /* value: "ab\0c" */
    MUT_BIN,        /* value: n bytes */
    MUT_ARRAY_INT,  /* value: n copies of i */
    MUT_ARRAY_UINT, /* value: n copies of u */
    MUT_ARRAY_FLOAT,/* value: n copies of 2.0 */
    MUT_ARRAY_STR,  /* value: n copies of s */
    MUT_ARRAY_ELEM, /* value: n valid elements (tensors, or roster slots numbered from 0) */
} mut_kind_t;

typedef struct {
    const char *name;
    proto_msg_type_t type; /* the valid frame to start from */
    const char *key;       /* "id", "tensors.shape", "slots.state": nested keys hit element 0 */
    mut_kind_t kind;
    uint64_t u;
    int64_t i;
    const char *s;
    uint32_t n;
    const char *expect;    /* a part of the error; NULL: the frame must decode */
} frame_case_t;

typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    const frame_case_t *c;
} wr_t;

static void wr_str(wr_t *w, const char *s)
{
    msgpack_pack_str(&w->pk, strlen(s));
    msgpack_pack_str_body(&w->pk, s, strlen(s));
}

/* Does the case's key live directly in the map at scope ("" or "tensors.")? */
static int wr_in_scope(const wr_t *w, const char *scope)
{
    size_t n = strlen(scope);
    const char *key = w->c->key;
    return key != NULL && strncmp(key, scope, n) == 0 && strchr(key + n, '.') == NULL;
}

static uint32_t wr_count(const wr_t *w, const char *scope, uint32_t n)
{
    if (!wr_in_scope(w, scope))
        return n;
    switch (w->c->kind) {
    case MUT_OMIT: return n - 1;
    case MUT_DUP: case MUT_EXTRA: case MUT_INTKEY: return n + 1;
    default: return n;
    }
}

static void wr_tensor(wr_t *w, const char *scope);
static void wr_slot(wr_t *w, const char *scope, uint32_t slot, const char *stage);

static void wr_value(wr_t *w, const char *key)
{
    const frame_case_t *c = w->c;
    switch (c->kind) {
    case MUT_UINT: msgpack_pack_uint64(&w->pk, c->u); break;
    case MUT_INT: msgpack_pack_int64(&w->pk, c->i); break;
    case MUT_FLOAT: msgpack_pack_double(&w->pk, 1.5); break;
    case MUT_NIL: msgpack_pack_nil(&w->pk); break;
    case MUT_MAP: msgpack_pack_map(&w->pk, 0); break;
    case MUT_STR: wr_str(w, c->s); break;
    case MUT_STRN: {
        char *s = malloc(c->n);
        assert_non_null(s);
        memset(s, 'a', c->n);
        msgpack_pack_str(&w->pk, c->n);
        msgpack_pack_str_body(&w->pk, s, c->n);
        free(s);
        break;
    }
    case MUT_STR_NUL:
        msgpack_pack_str(&w->pk, 4);
        msgpack_pack_str_body(&w->pk, "ab\0c", 4);
        break;
    case MUT_BIN: {
        char *s = calloc(1, c->n);
        assert_non_null(s);
        msgpack_pack_bin(&w->pk, c->n);
        msgpack_pack_bin_body(&w->pk, s, c->n);
        free(s);
        break;
    }
    default:
        msgpack_pack_array(&w->pk, c->n);
        for (uint32_t k = 0; k < c->n; k++) {
            if (c->kind == MUT_ARRAY_INT)
                msgpack_pack_int64(&w->pk, c->i);
            else if (c->kind == MUT_ARRAY_UINT)
                msgpack_pack_uint64(&w->pk, c->u);
            else if (c->kind == MUT_ARRAY_FLOAT)
                msgpack_pack_double(&w->pk, 2.0);
            else if (c->kind == MUT_ARRAY_STR)
                wr_str(w, c->s);
            else if (strcmp(key, "tensors") == 0)
                wr_tensor(w, "-");
            else
                wr_slot(w, "-", k % PROTO_MAX_SLOTS, "dit");
        }
        break;
    }
}

/* How many times the caller writes key with its valid value: 0 when the case omits the key or
 * has written a replacement value itself, 2 for a duplicate. */
static int wr_begin(wr_t *w, const char *scope, const char *key)
{
    const frame_case_t *c = w->c;
    if (!wr_in_scope(w, scope) || strcmp(c->key + strlen(scope), key) != 0)
        return 1;
    switch (c->kind) {
    case MUT_OMIT: return 0;
    case MUT_DUP: return 2;
    case MUT_NONE: case MUT_EXTRA: case MUT_INTKEY: return 1;
    default:
        wr_str(w, key);
        wr_value(w, key);
        return 0;
    }
}

/* The unknown keys a case adds go first, before the keys the decoder knows. */
static void wr_extra(wr_t *w, const char *scope)
{
    if (!wr_in_scope(w, scope))
        return;
    if (w->c->kind == MUT_EXTRA) {
        wr_str(w, w->c->key + strlen(scope));
        msgpack_pack_map(&w->pk, 1); /* {"deeper": [1, {"x": nil}]} */
        wr_str(w, "deeper");
        msgpack_pack_array(&w->pk, 2);
        msgpack_pack_uint64(&w->pk, 1);
        msgpack_pack_map(&w->pk, 1);
        wr_str(w, "x");
        msgpack_pack_nil(&w->pk);
    } else if (w->c->kind == MUT_INTKEY) {
        msgpack_pack_uint64(&w->pk, 7);
        msgpack_pack_uint64(&w->pk, 7);
    }
}

#define FIELD(w, scope, key, value) \
    for (int rep_ = wr_begin(w, scope, key); rep_ > 0; rep_--) { \
        wr_str(w, key); \
        value; \
    }

static void wr_tensor(wr_t *w, const char *scope)
{
    msgpack_pack_map(&w->pk, wr_count(w, scope, 7));
    wr_extra(w, scope);
    FIELD(w, scope, "pool", msgpack_pack_uint64(&w->pk, 2));
    FIELD(w, scope, "gen", msgpack_pack_uint64(&w->pk, 5));
    FIELD(w, scope, "off", msgpack_pack_uint64(&w->pk, 4096));
    FIELD(w, scope, "bytes", msgpack_pack_uint64(&w->pk, 24)); /* 2 x 3 f32 */
    FIELD(w, scope, "dev", msgpack_pack_int64(&w->pk, -1));
    FIELD(w, scope, "dtype", msgpack_pack_uint64(&w->pk, PROTO_DTYPE_F32));
    FIELD(w, scope, "shape", {
        msgpack_pack_array(&w->pk, 2);
        msgpack_pack_uint64(&w->pk, 2);
        msgpack_pack_uint64(&w->pk, 3);
    });
}

static void wr_slot(wr_t *w, const char *scope, uint32_t slot, const char *stage)
{
    msgpack_pack_map(&w->pk, wr_count(w, scope, 5));
    wr_extra(w, scope);
    FIELD(w, scope, "slot", msgpack_pack_uint64(&w->pk, slot));
    FIELD(w, scope, "stage", wr_str(w, stage));
    FIELD(w, scope, "replica", msgpack_pack_uint64(&w->pk, 0));
    FIELD(w, scope, "gen", msgpack_pack_uint64(&w->pk, 1));
    FIELD(w, scope, "state", msgpack_pack_uint64(&w->pk, PROTO_SLOT_UP));
}

/* The valid frame of each type, written by hand rather than by proto_encode. */
static void wr_frame(wr_t *w)
{
    static const uint32_t keys[] = {
        [PROTO_MSG_HELLO] = 4, [PROTO_MSG_READY] = 2, [PROTO_MSG_HEARTBEAT] = 10,
        [PROTO_MSG_ROSTER] = 2, [PROTO_MSG_DRAIN] = 0, [PROTO_MSG_SHUTDOWN] = 0,
        [PROTO_MSG_JOB] = 11,
    };
    proto_msg_type_t type = w->c->type;

    msgpack_pack_map(&w->pk, wr_count(w, "", 2 + keys[type]));
    wr_extra(w, "");
    FIELD(w, "", "v", msgpack_pack_uint64(&w->pk, PROTO_VERSION));
    FIELD(w, "", "t", wr_str(w, proto_msg_type_name(type)));
    switch (type) {
    case PROTO_MSG_HELLO:
        FIELD(w, "", "stage", wr_str(w, "dit"));
        FIELD(w, "", "slot", msgpack_pack_uint64(&w->pk, 1));
        FIELD(w, "", "gen", msgpack_pack_uint64(&w->pk, 2));
        FIELD(w, "", "pid", msgpack_pack_int64(&w->pk, 1234));
        break;
    case PROTO_MSG_READY:
        FIELD(w, "", "slot", msgpack_pack_uint64(&w->pk, 1));
        FIELD(w, "", "gen", msgpack_pack_uint64(&w->pk, 2));
        break;
    case PROTO_MSG_HEARTBEAT: {
        static const char *const stats[] = {"slot", "gen", "jobs_done", "jobs_failed",
                                            "jobs_dropped", "inflight", "busy_us", "pool_used",
                                            "pool_capacity"};
        for (unsigned k = 0; k < 9; k++)
            FIELD(w, "", stats[k], msgpack_pack_uint64(&w->pk, k + 1));
        FIELD(w, "", "draining", msgpack_pack_uint64(&w->pk, 1));
        break;
    }
    case PROTO_MSG_ROSTER:
        FIELD(w, "", "seq", msgpack_pack_uint64(&w->pk, 9));
        FIELD(w, "", "slots", {
            msgpack_pack_array(&w->pk, 2);
            wr_slot(w, "slots.", 0, "ingress");
            wr_slot(w, "-", 1, "dit");
        });
        break;
    case PROTO_MSG_JOB:
        FIELD(w, "", "id", msgpack_pack_uint64(&w->pk, 42));
        FIELD(w, "", "attempt", msgpack_pack_uint64(&w->pk, 1));
        FIELD(w, "", "to_gen", msgpack_pack_uint64(&w->pk, 3));
        FIELD(w, "", "origin", wr_str(w, "ingress"));
        FIELD(w, "", "origin_slot", msgpack_pack_uint64(&w->pk, 2));
        FIELD(w, "", "origin_gen", msgpack_pack_uint64(&w->pk, 7));
        FIELD(w, "", "route", {
            msgpack_pack_array(&w->pk, 2);
            wr_str(w, "text_enc");
            wr_str(w, "dit");
        });
        FIELD(w, "", "tensors", {
            msgpack_pack_array(&w->pk, 1);
            wr_tensor(w, "tensors.");
        });
        FIELD(w, "", "err", msgpack_pack_int64(&w->pk, 0));
        FIELD(w, "", "err_msg", wr_str(w, ""));
        FIELD(w, "", "params", {
            msgpack_pack_bin(&w->pk, 4);
            msgpack_pack_bin_body(&w->pk, "\x01\x02\x03\x04", 4);
        });
        break;
    default:
        break;
    }
}

#define OK(nm, ty, k, knd, ...) \
    {.name = (nm), .type = (ty), .key = (k), .kind = (knd), __VA_ARGS__}
static const frame_case_t frame_cases[] = {
    /* the valid frames, and changes a decoder must accept */
    OK("job valid", PROTO_MSG_JOB, NULL, MUT_NONE),
    OK("hello valid", PROTO_MSG_HELLO, NULL, MUT_NONE),
    OK("ready valid", PROTO_MSG_READY, NULL, MUT_NONE),
    OK("heartbeat valid", PROTO_MSG_HEARTBEAT, NULL, MUT_NONE),
    OK("roster valid", PROTO_MSG_ROSTER, NULL, MUT_NONE),
    OK("drain valid", PROTO_MSG_DRAIN, NULL, MUT_NONE),
    OK("shutdown valid", PROTO_MSG_SHUTDOWN, NULL, MUT_NONE),
    OK("job without err", PROTO_MSG_JOB, "err", MUT_OMIT),
    OK("job without err_msg", PROTO_MSG_JOB, "err_msg", MUT_OMIT),
    OK("job without params", PROTO_MSG_JOB, "params", MUT_OMIT),
    OK("job unknown key", PROTO_MSG_JOB, "zz_future", MUT_EXTRA),
    OK("tensor unknown key", PROTO_MSG_JOB, "tensors.zz_future", MUT_EXTRA),
    OK("roster slot unknown key", PROTO_MSG_ROSTER, "slots.zz_future", MUT_EXTRA),
    OK("drain unknown key", PROTO_MSG_DRAIN, "zz_future", MUT_EXTRA),
    OK("job empty route", PROTO_MSG_JOB, "route", MUT_ARRAY_STR, .s = "x", .n = 0),
    OK("job 8 route steps", PROTO_MSG_JOB, "route", MUT_ARRAY_STR, .s = "dit", .n = 8),
    OK("job no tensors", PROTO_MSG_JOB, "tensors", MUT_ARRAY_ELEM, .n = 0),
    OK("job 16 tensors", PROTO_MSG_JOB, "tensors", MUT_ARRAY_ELEM, .n = 16),
    OK("job origin 31 bytes", PROTO_MSG_JOB, "origin", MUT_STRN, .n = 31),
    OK("job err negative", PROTO_MSG_JOB, "err", MUT_INT, .i = -5),
    OK("job err_msg 255 bytes", PROTO_MSG_JOB, "err_msg", MUT_STRN, .n = 255),
    OK("job params 64 KiB", PROTO_MSG_JOB, "params", MUT_BIN, .n = PROTO_MAX_PARAMS),
    OK("tensor dev cuda:7", PROTO_MSG_JOB, "tensors.dev", MUT_INT, .i = 7),
    OK("roster 128 slots", PROTO_MSG_ROSTER, "slots", MUT_ARRAY_ELEM, .n = 128),
    OK("roster no slots", PROTO_MSG_ROSTER, "slots", MUT_ARRAY_ELEM, .n = 0),

    /* "v" and "t" */
    OK("v missing", PROTO_MSG_JOB, "v", MUT_OMIT, .expect = "missing key \"v\""),
    OK("v 2", PROTO_MSG_JOB, "v", MUT_UINT, .u = 2,
       .expect = "protocol version 2, but this build speaks version 1"),
    OK("v huge", PROTO_MSG_DRAIN, "v", MUT_UINT, .u = UINT64_MAX, .expect = "protocol version 1844"),
    OK("v 0", PROTO_MSG_JOB, "v", MUT_UINT, .u = 0, .expect = "v: 0 is not a protocol version"),
    OK("v -1", PROTO_MSG_JOB, "v", MUT_INT, .i = -1, .expect = "v: -1 is not a protocol version"),
    OK("v string", PROTO_MSG_JOB, "v", MUT_STR, .s = "1", .expect = "v: expected a positive integer, got a string"),
    OK("v float", PROTO_MSG_JOB, "v", MUT_FLOAT, .expect = "v: expected a positive integer, got a float"),
    OK("v twice", PROTO_MSG_JOB, "v", MUT_DUP, .expect = "key \"v\" appears twice"),
    OK("t missing", PROTO_MSG_JOB, "t", MUT_OMIT, .expect = "missing key \"t\""),
    OK("t unknown", PROTO_MSG_JOB, "t", MUT_STR, .s = "bogus", .expect = "unknown message type \"bogus\""),
    OK("t unprintable", PROTO_MSG_JOB, "t", MUT_STR, .s = "j\x01\"", .expect = "unknown message type \"j\\x01\\x22\""),
    OK("t long", PROTO_MSG_JOB, "t", MUT_STRN, .n = 1000, .expect = "aaaa...\""),
    OK("t empty", PROTO_MSG_JOB, "t", MUT_STR, .s = "", .expect = "unknown message type \"\""),
    OK("t integer", PROTO_MSG_JOB, "t", MUT_UINT, .u = 7, .expect = "t: expected a string, got an integer"),
    OK("t twice", PROTO_MSG_HELLO, "t", MUT_DUP, .expect = "key \"t\" appears twice"),
    OK("top integer key", PROTO_MSG_JOB, "x", MUT_INTKEY, .expect = "a key is an integer, not a string"),

    /* job scalars */
    OK("id missing", PROTO_MSG_JOB, "id", MUT_OMIT, .expect = "job: missing key \"id\""),
    OK("id twice", PROTO_MSG_JOB, "id", MUT_DUP, .expect = "job: key \"id\" appears twice"),
    OK("id float", PROTO_MSG_JOB, "id", MUT_FLOAT, .expect = "job.id: expected an integer, got a float"),
    OK("id negative", PROTO_MSG_JOB, "id", MUT_INT, .i = -1, .expect = "job.id: -1 is negative"),
    OK("id string", PROTO_MSG_JOB, "id", MUT_STR, .s = "42", .expect = "job.id: expected an integer, got a string"),
    OK("id nil", PROTO_MSG_JOB, "id", MUT_NIL, .expect = "job.id: expected an integer, got nil"),
    OK("attempt 2^32", PROTO_MSG_JOB, "attempt", MUT_UINT, .u = 1ull << 32,
       .expect = "job.attempt: 4294967296 does not fit in 32 bits"),
    OK("to_gen missing", PROTO_MSG_JOB, "to_gen", MUT_OMIT, .expect = "job: missing key \"to_gen\""),
    OK("origin_slot missing", PROTO_MSG_JOB, "origin_slot", MUT_OMIT, .expect = "job: missing key \"origin_slot\""),
    OK("origin_gen missing", PROTO_MSG_JOB, "origin_gen", MUT_OMIT, .expect = "job: missing key \"origin_gen\""),
    OK("heartbeat draining 2", PROTO_MSG_HEARTBEAT, "draining", MUT_UINT, .u = 2, .expect = "heartbeat.draining: 2 is above 1"),
    OK("origin_slot 128", PROTO_MSG_JOB, "origin_slot", MUT_UINT, .u = PROTO_MAX_SLOTS, .expect = "job.origin_slot: 128 is above 127"),
    OK("origin 32 bytes", PROTO_MSG_JOB, "origin", MUT_STRN, .n = 32,
       .expect = "job.origin: 32 bytes, longer than 31"),
    OK("origin upper case", PROTO_MSG_JOB, "origin", MUT_STR, .s = "Ingress",
       .expect = "job.origin: byte 0x49 at 0 is not one of [a-z0-9_]"),
    OK("origin dash", PROTO_MSG_JOB, "origin", MUT_STR, .s = "a-b", .expect = "job.origin: byte 0x2d at 1"),
    OK("origin empty", PROTO_MSG_JOB, "origin", MUT_STR, .s = "", .expect = "job.origin: empty name"),
    OK("origin NUL", PROTO_MSG_JOB, "origin", MUT_STR_NUL, .expect = "job.origin: contains a NUL byte"),
    OK("origin bin", PROTO_MSG_JOB, "origin", MUT_BIN, .n = 3, .expect = "job.origin: expected a string, got bin data"),
    OK("route string", PROTO_MSG_JOB, "route", MUT_STR, .s = "dit", .expect = "job.route: expected an array, got a string"),
    OK("route 9 steps", PROTO_MSG_JOB, "route", MUT_ARRAY_STR, .s = "dit", .n = 9,
       .expect = "job.route: 9 entries, more than 8"),
    OK("route bad step", PROTO_MSG_JOB, "route", MUT_ARRAY_STR, .s = "d.t", .n = 1,
       .expect = "job.route[0]: byte 0x2e at 1"),
    OK("route long step", PROTO_MSG_JOB, "route", MUT_ARRAY_STR,
       .s = "abcdefghijklmnopqrstuvwxyz012345", .n = 2, .expect = "job.route[0]: 32 bytes, longer than 31"),
    OK("route integer step", PROTO_MSG_JOB, "route", MUT_ARRAY_INT, .i = 3, .n = 1,
       .expect = "job.route[0]: expected a string, got an integer"),
    OK("err float", PROTO_MSG_JOB, "err", MUT_FLOAT, .expect = "job.err: expected an integer, got a float"),
    OK("err 2^31", PROTO_MSG_JOB, "err", MUT_UINT, .u = 1ull << 31,
       .expect = "job.err: 2147483648 does not fit in a signed 32-bit integer"),
    OK("err -2^31-1", PROTO_MSG_JOB, "err", MUT_INT, .i = INT64_C(-2147483649),
       .expect = "job.err: -2147483649 does not fit"),
    OK("err_msg 256 bytes", PROTO_MSG_JOB, "err_msg", MUT_STRN, .n = 256,
       .expect = "job.err_msg: 256 bytes, longer than 255"),
    OK("err_msg NUL", PROTO_MSG_JOB, "err_msg", MUT_STR_NUL, .expect = "job.err_msg: contains a NUL byte"),
    OK("err_msg integer", PROTO_MSG_JOB, "err_msg", MUT_UINT, .u = 1, .expect = "job.err_msg: expected a string"),
    OK("params 64 KiB + 1", PROTO_MSG_JOB, "params", MUT_BIN, .n = PROTO_MAX_PARAMS + 1,
       .expect = "job.params: 65537 bytes, more than 65536"),
    OK("params string", PROTO_MSG_JOB, "params", MUT_STR, .s = "abc", .expect = "job.params: expected bin data, got a string"),
    OK("oversize frame", PROTO_MSG_JOB, "params", MUT_BIN, .n = PROTO_MAX_FRAME,
       .expect = "is larger than PROTO_MAX_FRAME"),

    /* tensors */
    OK("tensors 17", PROTO_MSG_JOB, "tensors", MUT_ARRAY_ELEM, .n = 17, .expect = "job.tensors: 17 entries, more than 16"),
    OK("tensors map", PROTO_MSG_JOB, "tensors", MUT_MAP, .expect = "job.tensors: expected an array, got a map"),
    OK("tensor not a map", PROTO_MSG_JOB, "tensors", MUT_ARRAY_INT, .i = 1, .n = 1,
       .expect = "job.tensors[0]: expected a map, got an integer"),
    OK("tensor integer key", PROTO_MSG_JOB, "tensors.x", MUT_INTKEY,
       .expect = "job.tensors[0]: a key is an integer, not a string"),
    OK("tensor pool 128", PROTO_MSG_JOB, "tensors.pool", MUT_UINT, .u = 128,
       .expect = "job.tensors[0].pool: 128 is above 127"),
    OK("tensor gen missing", PROTO_MSG_JOB, "tensors.gen", MUT_OMIT, .expect = "job.tensors[0]: missing key \"gen\""),
    OK("tensor gen twice", PROTO_MSG_JOB, "tensors.gen", MUT_DUP, .expect = "job.tensors[0]: key \"gen\" appears twice"),
    OK("tensor gen 2^32", PROTO_MSG_JOB, "tensors.gen", MUT_UINT, .u = 1ull << 32,
       .expect = "job.tensors[0].gen: 4294967296 does not fit in 32 bits"),
    OK("tensor dtype 7", PROTO_MSG_JOB, "tensors.dtype", MUT_UINT, .u = PROTO_DTYPE_COUNT,
       .expect = "job.tensors[0].dtype: 7 is above 6"),
    OK("tensor dtype 256", PROTO_MSG_JOB, "tensors.dtype", MUT_UINT, .u = 256,
       .expect = "job.tensors[0].dtype: 256 does not fit in 8 bits"),
    OK("tensor dtype string", PROTO_MSG_JOB, "tensors.dtype", MUT_STR, .s = "f32",
       .expect = "job.tensors[0].dtype: expected an integer, got a string"),
    OK("tensor dev -2", PROTO_MSG_JOB, "tensors.dev", MUT_INT, .i = -2,
       .expect = "job.tensors[0].dev: -2 is outside [-1, 2147483647]"),
    OK("tensor dev 2^31", PROTO_MSG_JOB, "tensors.dev", MUT_UINT, .u = 1ull << 31,
       .expect = "job.tensors[0].dev: 2147483648 does not fit in a signed 32-bit integer"),
    OK("tensor dev float", PROTO_MSG_JOB, "tensors.dev", MUT_FLOAT, .expect = "job.tensors[0].dev: expected an integer"),
    OK("tensor 6 dims", PROTO_MSG_JOB, "tensors.shape", MUT_ARRAY_UINT, .u = 1, .n = 6,
       .expect = "job.tensors[0].shape: 6 entries, more than 5"),
    OK("tensor negative dim", PROTO_MSG_JOB, "tensors.shape", MUT_ARRAY_INT, .i = -2, .n = 1,
       .expect = "job.tensors[0].shape[0]: -2 is below 0"),
    OK("tensor dim 2^63", PROTO_MSG_JOB, "tensors.shape", MUT_ARRAY_UINT, .u = 1ull << 63, .n = 1,
       .expect = "job.tensors[0].shape[0]: 9223372036854775808 does not fit in a signed 64-bit"),
    OK("tensor float dim", PROTO_MSG_JOB, "tensors.shape", MUT_ARRAY_FLOAT, .n = 2,
       .expect = "job.tensors[0].shape[0]: expected an integer, got a float"),
    OK("tensor shape string", PROTO_MSG_JOB, "tensors.shape", MUT_STR, .s = "2x3",
       .expect = "job.tensors[0].shape: expected an array"),
    OK("tensor bytes mismatch", PROTO_MSG_JOB, "tensors.bytes", MUT_UINT, .u = 25,
       .expect = "job.tensors[0].bytes: 25, but 6 elements of f32 take 24"),
    OK("tensor bytes missing", PROTO_MSG_JOB, "tensors.bytes", MUT_OMIT, .expect = "job.tensors[0]: missing key \"bytes\""),
    OK("tensor shape overflow", PROTO_MSG_JOB, "tensors.shape", MUT_ARRAY_UINT, .u = 1ull << 32, .n = 3,
       .expect = "job.tensors[0].shape: element count overflows 64 bits"),
    OK("tensor size overflow", PROTO_MSG_JOB, "tensors.shape", MUT_ARRAY_UINT, .u = 1ull << 31, .n = 2,
       .expect = "job.tensors[0].shape: size in bytes overflows 64 bits"),
    OK("tensor off overflow", PROTO_MSG_JOB, "tensors.off", MUT_UINT, .u = UINT64_MAX - 10,
       .expect = "job.tensors[0].off: 18446744073709551605 + 24 bytes overflows 64 bits"),

    /* hello, ready, heartbeat */
    OK("hello slot 128", PROTO_MSG_HELLO, "slot", MUT_UINT, .u = PROTO_MAX_SLOTS, .expect = "hello.slot: 128 is above 127"),
    OK("hello pid 0", PROTO_MSG_HELLO, "pid", MUT_UINT, .u = 0, .expect = "hello.pid: 0 is outside [1, 2147483647]"),
    OK("hello pid negative", PROTO_MSG_HELLO, "pid", MUT_INT, .i = -5, .expect = "hello.pid: -5 is outside"),
    OK("hello stage missing", PROTO_MSG_HELLO, "stage", MUT_OMIT, .expect = "hello: missing key \"stage\""),
    OK("hello stage bang", PROTO_MSG_HELLO, "stage", MUT_STR, .s = "dit!", .expect = "hello.stage: byte 0x21 at 3"),
    OK("hello stage utf-8", PROTO_MSG_HELLO, "stage", MUT_STR, .s = "d\xc3\xa9", .expect = "hello.stage: byte 0xc3 at 1"),
    OK("ready gen negative", PROTO_MSG_READY, "gen", MUT_INT, .i = -1, .expect = "ready.gen: -1 is negative"),
    OK("ready slot missing", PROTO_MSG_READY, "slot", MUT_OMIT, .expect = "ready: missing key \"slot\""),
    OK("heartbeat inflight 2^32", PROTO_MSG_HEARTBEAT, "inflight", MUT_UINT, .u = 1ull << 32,
       .expect = "heartbeat.inflight: 4294967296 does not fit in 32 bits"),
    OK("heartbeat capacity missing", PROTO_MSG_HEARTBEAT, "pool_capacity", MUT_OMIT,
       .expect = "heartbeat: missing key \"pool_capacity\""),
    OK("heartbeat busy float", PROTO_MSG_HEARTBEAT, "busy_us", MUT_FLOAT,
       .expect = "heartbeat.busy_us: expected an integer, got a float"),

    /* roster */
    OK("roster seq missing", PROTO_MSG_ROSTER, "seq", MUT_OMIT, .expect = "roster: missing key \"seq\""),
    OK("roster slots map", PROTO_MSG_ROSTER, "slots", MUT_MAP, .expect = "roster.slots: expected an array, got a map"),
    OK("roster 129 slots", PROTO_MSG_ROSTER, "slots", MUT_ARRAY_ELEM, .n = 129,
       .expect = "roster.slots: 129 entries, more than 128"),
    OK("roster state failed", PROTO_MSG_ROSTER, "slots.state", MUT_UINT, .u = PROTO_SLOT_FAILED),
    OK("roster state retiring", PROTO_MSG_ROSTER, "slots.state", MUT_UINT, .u = PROTO_SLOT_RETIRING),
    OK("roster state 6", PROTO_MSG_ROSTER, "slots.state", MUT_UINT, .u = 6,
       .expect = "roster.slots[0].state: 6 is above 5"),
    OK("roster slot 128", PROTO_MSG_ROSTER, "slots.slot", MUT_UINT, .u = 128,
       .expect = "roster.slots[0].slot: 128 is above 127"),
    OK("roster slot twice", PROTO_MSG_ROSTER, "slots.slot", MUT_UINT, .u = 1,
       .expect = "roster.slots[1].slot: slot 1 listed twice"),
    OK("roster stage missing", PROTO_MSG_ROSTER, "slots.stage", MUT_OMIT,
       .expect = "roster.slots[0]: missing key \"stage\""),
    OK("roster stage too long", PROTO_MSG_ROSTER, "slots.stage", MUT_STRN, .n = 40,
       .expect = "roster.slots[0].stage: 40 bytes, longer than 31"),
    OK("roster replica negative", PROTO_MSG_ROSTER, "slots.replica", MUT_INT, .i = -3,
       .expect = "roster.slots[0].replica: -3 is negative"),
};

static void test_frame_case(void **state)
{
    const frame_case_t *c = *state;
    wr_t w = {.c = c};
    proto_msg_t *out = malloc(sizeof *out);
    char err[512] = "";
    int rc;

    assert_non_null(out);
    msgpack_sbuffer_init(&w.sb);
    msgpack_packer_init(&w.pk, &w.sb, msgpack_sbuffer_write);
    wr_frame(&w);
    assert_non_null(w.sb.data);
    rc = proto_decode(w.sb.data, w.sb.size, out, err, sizeof err);
    if (c->expect == NULL) {
        if (rc != 0)
            fail_msg("%s: refused: %s", c->name, err);
        assert_int_equal(out->type, c->type);
    } else {
        if (rc != -1)
            fail_msg("%s: accepted, expected \"%s\"", c->name, c->expect);
        if (strstr(err, c->expect) == NULL)
            fail_msg("%s: error \"%s\" lacks \"%s\"", c->name, err, c->expect);
        assert_int_equal(out->type, 0);
    }
    msgpack_sbuffer_destroy(&w.sb);
    free(out);
}

/* The valid frames above mean what they say, not merely "decode". */
static void test_frame_valid_values(void **state)
{
    frame_case_t c = {.name = "job", .type = PROTO_MSG_JOB};
    wr_t w = {.c = &c};
    proto_msg_t out;
    char err[256];

    msgpack_sbuffer_init(&w.sb);
    msgpack_packer_init(&w.pk, &w.sb, msgpack_sbuffer_write);
    wr_frame(&w);
    assert_int_equal(proto_decode(w.sb.data, w.sb.size, &out, err, sizeof err), 0);
    assert_int_equal(out.u.job.id, 42);
    assert_int_equal(out.u.job.attempt, 1);
    assert_int_equal(out.u.job.to_gen, 3);
    assert_string_equal(out.u.job.origin, "ingress");
    assert_int_equal(out.u.job.origin_slot, 2);
    assert_int_equal(out.u.job.origin_gen, 7);
    assert_int_equal(out.u.job.n_route, 2);
    assert_string_equal(out.u.job.route[0], "text_enc");
    assert_string_equal(out.u.job.route[1], "dit");
    assert_int_equal(out.u.job.n_tensors, 1);
    assert_int_equal(out.u.job.tensors[0].pool, 2);
    assert_int_equal(out.u.job.tensors[0].gen, 5);
    assert_int_equal(out.u.job.tensors[0].offset, 4096);
    assert_int_equal(out.u.job.tensors[0].bytes, 24);
    assert_int_equal(out.u.job.tensors[0].device, -1);
    assert_int_equal(out.u.job.tensors[0].dtype, PROTO_DTYPE_F32);
    assert_int_equal(out.u.job.tensors[0].ndim, 2);
    assert_int_equal(out.u.job.tensors[0].shape[0], 2);
    assert_int_equal(out.u.job.tensors[0].shape[1], 3);
    assert_int_equal(out.u.job.params_len, 4);
    assert_memory_equal(out.u.job.params, "\x01\x02\x03\x04", 4);
    msgpack_sbuffer_destroy(&w.sb);
}

/* ---- raw bytes ---- */

typedef struct {
    const char *name;
    const char *bytes;
    size_t size;
    const char *expect;
} raw_case_t;

#define RAW(nm, b, ex) {(nm), (b), sizeof(b) - 1, (ex)}
static const raw_case_t raw_cases[] = {
    {"empty", "", 0, "empty frame"},
    RAW("array", "\x91\x01", "frame holds an array, not a map"),
    RAW("integer", "\x01", "frame holds an integer, not a map"),
    RAW("string", "\xa3job", "frame holds a string, not a map"),
    RAW("nil", "\xc0", "frame holds nil, not a map"),
    RAW("float", "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", "frame holds a float, not a map"),
    RAW("empty map", "\x80", "missing key \"v\""),
    RAW("never-used byte", "\xc1", "byte 0xc1 at offset 0 is not msgpack"),
    RAW("never-used byte inside", "\x81\xa1v\xc1", "byte 0xc1 at offset 3 is not msgpack"),
    RAW("map missing its entries", "\x81", "map at offset 0 declares 1 entries"),
    RAW("map16 cut in its length", "\xde\x00", "frame truncated: it ends inside a length"),
    RAW("str8 past the end", "\x81\xa1v\xd9\x10" "abc", "runs 13 bytes past the end"),
    RAW("bin32 past the end", "\xc6\xff\xff\xff\xff\x00", "frame truncated"),
    RAW("map32 of 2^32-1", "\xdf\xff\xff\xff\xff", "map at offset 0 declares 4294967295 entries"),
    RAW("array32 of 2^32-1 inside", "\x81\xa1x\xdd\xff\xff\xff\xff\x00",
        "array at offset 3 declares 4294967295 elements"),
    RAW("array16 one too many", "\x81\xa1x\xdc\x00\x03\x01\x02", "array at offset 3 declares 3 elements"),
    RAW("trailing byte", "\x82\xa1v\x01\xa1t\xa5" "drain" "\x00", "1 trailing bytes after the message"),
    RAW("two messages", "\x82\xa1v\x01\xa1t\xa5" "drain" "\x82\xa1v\x01\xa1t\xa5" "drain",
        "12 trailing bytes"),
    RAW("non-string top key", "\x83\xa1v\x01\xa1t\xa5" "drain" "\x01\x02", "a key is an integer, not a string"),
    RAW("ext value ignored", "\x83\xa1v\x01\xa1t\xa5" "drain" "\xa1x\xd4\x01\x02", NULL),
    RAW("drain", "\x82\xa1v\x01\xa1t\xa5" "drain", NULL),
    RAW("v as int8", "\x82\xa1v\xd0\x01\xa1t\xa5" "drain", NULL),
};

static void test_raw_case(void **state)
{
    const raw_case_t *c = *state;
    proto_msg_t *out = malloc(sizeof *out);
    char *copy = malloc(c->size > 0 ? c->size : 1); /* exact size: ASan sees overreads */
    char err[256] = "";
    int rc;

    assert_non_null(out);
    assert_non_null(copy);
    memcpy(copy, c->bytes, c->size);
    rc = proto_decode(copy, c->size, out, err, sizeof err);
    if (c->expect == NULL) {
        if (rc != 0)
            fail_msg("%s: refused: %s", c->name, err);
    } else {
        if (rc != -1)
            fail_msg("%s: accepted", c->name);
        if (strstr(err, c->expect) == NULL)
            fail_msg("%s: error \"%s\" lacks \"%s\"", c->name, err, c->expect);
    }
    free(copy);
    free(out);
}

static void test_oversize_rejected_unread(void **state)
{
    /* Not even the first byte may be read: the frame is refused on its size alone. */
    char err[256] = "";
    proto_msg_t out;
    char *big = malloc(PROTO_MAX_FRAME + 1);
    assert_non_null(big);
    memset(big, 0xc1, PROTO_MAX_FRAME + 1);
    assert_int_equal(proto_decode(big, PROTO_MAX_FRAME + 1, &out, err, sizeof err), -1);
    assert_non_null(strstr(err, "frame of 81921 bytes is larger than PROTO_MAX_FRAME (81920)"));
    assert_int_equal(proto_decode(NULL, 0, &out, err, sizeof err), -1);
    assert_non_null(strstr(err, "empty frame"));
    free(big);
}

/* {"v":1, "t":"drain", "x": depth-1 nested arrays}: the top map is the first level. */
static int decode_nested(unsigned depth, char *err, size_t errlen)
{
    char frame[64] = "\x83\xa1v\x01\xa1t\xa5" "drain" "\xa1x";
    size_t n = 14;
    proto_msg_t out;
    for (unsigned i = 1; i < depth; i++)
        frame[n++] = (char)(i + 1 < depth ? 0x91 : 0x90);
    if (depth == 1)
        frame[n++] = 0x01;
    return proto_decode(frame, n, &out, err, errlen);
}

static void test_nesting_bounded(void **state)
{
    char err[256] = "";
    assert_int_equal(decode_nested(PROTO_MAX_DEPTH, err, sizeof err), 0);
    assert_int_equal(decode_nested(PROTO_MAX_DEPTH + 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "nested deeper than 8"));
    assert_int_equal(decode_nested(40, err, sizeof err), -1); /* past msgpack-c's own 32 */
    assert_non_null(strstr(err, "nested deeper than 8"));
}

/* ---- structs proto_encode must refuse ---- */

static void base_hello(proto_msg_t *m)
{
    memset(m, 0, sizeof *m);
    m->type = PROTO_MSG_HELLO;
    strcpy(m->u.hello.stage, "dit");
    m->u.hello.slot = 1;
    m->u.hello.gen = 1;
    m->u.hello.pid = 100;
}

static void base_roster(proto_msg_t *m)
{
    memset(m, 0, sizeof *m);
    m->type = PROTO_MSG_ROSTER;
    m->u.roster.n = 2;
    m->u.roster.entries[0] = (proto_roster_entry_t){.slot = 0, .stage = "ingress", .gen = 1};
    m->u.roster.entries[1] = (proto_roster_entry_t){.slot = 1, .stage = "dit", .gen = 1};
}

static void base_job(proto_msg_t *m)
{
    memset(m, 0, sizeof *m);
    m->type = PROTO_MSG_JOB;
    strcpy(m->u.job.origin, "ingress");
    m->u.job.n_route = 1;
    strcpy(m->u.job.route[0], "dit");
    m->u.job.n_tensors = 1;
    m->u.job.tensors[0] = (proto_tensor_ref_t){.pool = 1, .gen = 1, .bytes = 24, .device = -1,
                                               .dtype = PROTO_DTYPE_F32, .ndim = 2, .shape = {2, 3}};
}

static void enc_type_0(proto_msg_t *m) { base_hello(m); m->type = 0; }
static void enc_type_99(proto_msg_t *m) { base_hello(m); m->type = 99; }
static void enc_hello_slot(proto_msg_t *m) { base_hello(m); m->u.hello.slot = PROTO_MAX_SLOTS; }
static void enc_hello_stage_empty(proto_msg_t *m) { base_hello(m); m->u.hello.stage[0] = '\0'; }
static void enc_hello_stage_upper(proto_msg_t *m) { base_hello(m); m->u.hello.stage[0] = 'D'; }
static void enc_hello_stage_unterminated(proto_msg_t *m)
{
    base_hello(m);
    memset(m->u.hello.stage, 'a', PROTO_NAME_MAX);
}
static void enc_hello_pid(proto_msg_t *m) { base_hello(m); m->u.hello.pid = 0; }
static void enc_ready_slot(proto_msg_t *m)
{
    memset(m, 0, sizeof *m);
    m->type = PROTO_MSG_READY;
    m->u.ready.slot = 1000;
}
static void enc_heartbeat_slot(proto_msg_t *m)
{
    memset(m, 0, sizeof *m);
    m->type = PROTO_MSG_HEARTBEAT;
    m->u.heartbeat.slot = UINT32_MAX;
}
static void enc_roster_n(proto_msg_t *m) { base_roster(m); m->u.roster.n = PROTO_MAX_SLOTS + 1; }
static void enc_roster_state(proto_msg_t *m) { base_roster(m); m->u.roster.entries[0].state = PROTO_SLOT_RETIRING + 1; }
static void enc_roster_dup(proto_msg_t *m) { base_roster(m); m->u.roster.entries[1].slot = 0; }
static void enc_roster_stage(proto_msg_t *m) { base_roster(m); strcpy(m->u.roster.entries[1].stage, "x y"); }
static void enc_job_route_n(proto_msg_t *m) { base_job(m); m->u.job.n_route = PROTO_MAX_ROUTE + 1; }
static void enc_job_route_name(proto_msg_t *m) { base_job(m); strcpy(m->u.job.route[0], "a b"); }
static void enc_job_tensors_n(proto_msg_t *m) { base_job(m); m->u.job.n_tensors = PROTO_MAX_TENSORS + 1; }
static void enc_job_ndim(proto_msg_t *m) { base_job(m); m->u.job.tensors[0].ndim = PROTO_MAX_DIMS + 1; }
static void enc_job_dtype(proto_msg_t *m) { base_job(m); m->u.job.tensors[0].dtype = PROTO_DTYPE_COUNT; }
static void enc_job_dim(proto_msg_t *m) { base_job(m); m->u.job.tensors[0].shape[1] = -1; }
static void enc_job_bytes(proto_msg_t *m) { base_job(m); m->u.job.tensors[0].bytes = 23; }
static void enc_job_dev(proto_msg_t *m) { base_job(m); m->u.job.tensors[0].device = -2; }
static void enc_job_pool(proto_msg_t *m) { base_job(m); m->u.job.tensors[0].pool = PROTO_MAX_SLOTS; }
static void enc_job_off(proto_msg_t *m) { base_job(m); m->u.job.tensors[0].offset = UINT64_MAX - 23; }
static void enc_job_params_len(proto_msg_t *m)
{
    base_job(m);
    m->u.job.params = big_params;
    m->u.job.params_len = PROTO_MAX_PARAMS + 1;
}
static void enc_job_params_null(proto_msg_t *m) { base_job(m); m->u.job.params_len = 5; }
static void enc_job_err_msg(proto_msg_t *m)
{
    base_job(m);
    memset(m->u.job.error_msg, 'x', PROTO_ERROR_MAX);
}
static void enc_job_origin(proto_msg_t *m) { base_job(m); m->u.job.origin[0] = '\0'; }

typedef struct {
    const char *name;
    void (*make)(proto_msg_t *m);
    const char *expect;
} enc_case_t;

static const enc_case_t enc_cases[] = {
    {"type 0", enc_type_0, "cannot encode unknown message type 0"},
    {"type 99", enc_type_99, "cannot encode unknown message type 99"},
    {"hello slot", enc_hello_slot, "hello.slot: 128 is above 127"},
    {"hello stage empty", enc_hello_stage_empty, "hello.stage: empty name"},
    {"hello stage upper", enc_hello_stage_upper, "hello.stage: byte 0x44 at 0"},
    {"hello stage unterminated", enc_hello_stage_unterminated, "hello.stage: name longer than 31 bytes"},
    {"hello pid 0", enc_hello_pid, "hello.pid: 0 is outside [1, 2147483647]"},
    {"ready slot", enc_ready_slot, "ready.slot: 1000 is above 127"},
    {"heartbeat slot", enc_heartbeat_slot, "heartbeat.slot: 4294967295 is above 127"},
    {"roster 129", enc_roster_n, "roster.slots: 129 entries, more than 128"},
    {"roster state", enc_roster_state, "roster.slots[0].state: 6 is above 5"},
    {"roster slot twice", enc_roster_dup, "roster.slots[1].slot: slot 0 listed twice"},
    {"roster stage", enc_roster_stage, "roster.slots[1].stage: byte 0x20 at 1"},
    {"job route 9", enc_job_route_n, "job.route: 9 entries, more than 8"},
    {"job route name", enc_job_route_name, "job.route[0]: byte 0x20 at 1"},
    {"job tensors 17", enc_job_tensors_n, "job.tensors: 17 entries, more than 16"},
    {"job ndim 6", enc_job_ndim, "job.tensors[0].shape: 6 entries, more than 5"},
    {"job dtype", enc_job_dtype, "job.tensors[0].dtype: 7 is above 6"},
    {"job dim", enc_job_dim, "job.tensors[0].shape[1]: -1 is below 0"},
    {"job bytes", enc_job_bytes, "job.tensors[0].bytes: 23, but 6 elements of f32 take 24"},
    {"job dev", enc_job_dev, "job.tensors[0].dev: -2 is outside [-1, 2147483647]"},
    {"job pool", enc_job_pool, "job.tensors[0].pool: 128 is above 127"},
    {"job off", enc_job_off, "job.tensors[0].off: 18446744073709551592 + 24 bytes overflows"},
    {"job params 64 KiB + 1", enc_job_params_len, "job.params: 65537 bytes, more than 65536"},
    {"job params NULL", enc_job_params_null, "job.params: 5 bytes at a NULL pointer"},
    {"job err_msg unterminated", enc_job_err_msg, "job.err_msg: text longer than 255 bytes"},
    {"job origin empty", enc_job_origin, "job.origin: empty name"},
};

static void test_enc_case(void **state)
{
    const enc_case_t *c = *state;
    proto_msg_t *m = malloc(sizeof *m);
    proto_buf_t buf = {.data = (char *)"stale", .size = 5};
    char err[256] = "";

    assert_non_null(m);
    c->make(m);
    if (proto_encode(m, &buf, err, sizeof err) != -1)
        fail_msg("%s: encoded", c->name);
    if (strstr(err, c->expect) == NULL)
        fail_msg("%s: error \"%s\" lacks \"%s\"", c->name, err, c->expect);
    assert_null(buf.data);
    assert_int_equal(buf.size, 0);
    free(m);
}

/* The base structs of the encode cases are themselves valid, so each case fails for its one
 * change. */
static void test_enc_bases_valid(void **state)
{
    void (*bases[])(proto_msg_t *) = {base_hello, base_roster, base_job};
    proto_msg_t m;
    proto_buf_t buf;
    char err[256] = "";
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        bases[i](&m);
        if (proto_encode(&m, &buf, err, sizeof err) != 0)
            fail_msg("base %zu: %s", i, err);
        proto_buf_free(&buf);
    }
}

/* One cmocka test per table row, so a failure names its case. */
static int run_table(const char *group, const void *rows, size_t n, size_t stride,
                     CMUnitTestFunction fn)
{
    struct CMUnitTest *tests = calloc(n, sizeof *tests);
    int failed;
    if (tests == NULL)
        return 1;
    for (size_t i = 0; i < n; i++) {
        const void *row = (const char *)rows + i * stride;
        tests[i].name = *(const char *const *)row; /* every row starts with its name */
        tests[i].test_func = fn;
        tests[i].initial_state = (void *)row;
    }
    failed = _cmocka_run_group_tests(group, tests, n, NULL, NULL);
    free(tests);
    return failed;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_hello),
        cmocka_unit_test(test_round_trip_ready),
        cmocka_unit_test(test_round_trip_heartbeat),
        cmocka_unit_test(test_round_trip_roster_128),
        cmocka_unit_test(test_round_trip_drain_shutdown),
        cmocka_unit_test(test_round_trip_job_max),
        cmocka_unit_test(test_round_trip_job_edge_tensors),
        cmocka_unit_test(test_job_optional_keys_omitted),
        cmocka_unit_test(test_job_params_borrow_from_frame),
        cmocka_unit_test(test_dtype_and_type_names),
        cmocka_unit_test(test_job_prefixes_rejected),
        cmocka_unit_test(test_error_buffer_optional),
        cmocka_unit_test(test_frame_valid_values),
        cmocka_unit_test(test_oversize_rejected_unread),
        cmocka_unit_test(test_nesting_bounded),
        cmocka_unit_test(test_enc_bases_valid),
    };
    int failed = cmocka_run_group_tests_name("proto", tests, NULL, NULL);
    failed += run_table("proto frames", frame_cases, sizeof frame_cases / sizeof frame_cases[0],
                        sizeof frame_cases[0], test_frame_case);
    failed += run_table("proto raw bytes", raw_cases, sizeof raw_cases / sizeof raw_cases[0],
                        sizeof raw_cases[0], test_raw_case);
    failed += run_table("proto encode refusals", enc_cases, sizeof enc_cases / sizeof enc_cases[0],
                        sizeof enc_cases[0], test_enc_case);
    return failed != 0;
}
