/* fuzz_safetensors: libFuzzer target for the safetensors header check, the code that stands
 * between a file from anywhere and a mapping that is trusted afterwards. Any bytes must give
 * 0 or -1 with a message, never a crash, a leak or a read outside the buffer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly size bytes, so that ASan sees any read past the end. */
    uint8_t *buf = malloc(size == 0 ? 1 : size);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    char err[512] = "";
    size_t count = (size_t)-1;
    int rc = safetensors_check_header(buf, size, &count, err, sizeof err);
    free(buf);
    if (rc != 0 && rc != -1)
        abort();
    if (rc == -1 && (err[0] == '\0' || strncmp(err, "buffer: ", 8) != 0)) {
        fprintf(stderr, "error without a message naming the file: \"%s\"\n", err);
        abort();
    }
    /* Each accepted entry takes dozens of header bytes: a count beyond size / 8 would be
     * tensors made up by the parser. */
    if (rc == 0 && count > size / 8)
        abort();
    return 0;
}
