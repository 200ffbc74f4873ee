/* fuzz_proto: proto_decode on arbitrary bytes refuses them or accepts them, never crashes; and
 * whatever it accepts must encode, decode again to the same message field by field, and encode
 * to the same bytes. A difference is our bug, so it aborts. Seeds: tests/fuzz/corpus/proto. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/proto.h"

#include "tests/common/proto_diff.h"

static void fuzz_bug(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_proto: %s: %s\n", what, detail);
    abort();
}

/* A decoded job's params must lie inside the frame it came from (proto.h). */
static void check_borrow(const proto_msg_t *m, const void *frame, size_t size)
{
    uintptr_t lo = (uintptr_t)frame, at = (uintptr_t)m->u.job.params;
    if (m->type != PROTO_MSG_JOB || m->u.job.params_len == 0)
        return;
    if (at < lo || at - lo > size || m->u.job.params_len > size - (at - lo))
        fuzz_bug("params outside the frame", "");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static proto_msg_t first, second; /* large; libFuzzer calls one input at a time */
    proto_buf_t buf, again;
    char err[512] = "", why[128] = "";

    if (proto_decode(data, size, &first, err, sizeof err) != 0) {
        if (err[0] == '\0')
            fuzz_bug("refused without a reason", "");
        return 0;
    }
    check_borrow(&first, data, size);
    if (proto_encode(&first, &buf, err, sizeof err) != 0)
        fuzz_bug("a decoded message does not encode", err);
    if (proto_decode(buf.data, buf.size, &second, err, sizeof err) != 0)
        fuzz_bug("an encoded message does not decode", err);
    check_borrow(&second, buf.data, buf.size);
    if (msg_diff(&first, &second, why, sizeof why) != 0)
        fuzz_bug("round trip changed a field", why);
    if (proto_encode(&second, &again, err, sizeof err) != 0)
        fuzz_bug("a re-decoded message does not encode", err);
    if (again.size != buf.size || memcmp(again.data, buf.data, buf.size) != 0)
        fuzz_bug("encoding the same message twice gave different bytes", "");
    proto_buf_free(&again);
    proto_buf_free(&buf);
    return 0;
}
