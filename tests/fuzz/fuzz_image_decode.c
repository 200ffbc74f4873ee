/* fuzz_image_decode: libFuzzer target for image_decode, the code that turns a client's upload
 * (PNG, JPEG or WebP) into pixels. Any bytes must give pixels of the size it reports, or -1
 * with a message; never a crash, a leak or a read outside the buffer. The pixel limit is
 * small so that huge declared sizes are refused rather than allocated. libpng, libjpeg and
 * libwebp come from Debian uninstrumented: the fuzzer steers by our wrapper's coverage only
 * and reaches the libraries' depths by mutation alone (ASan still watches every access to
 * our buffers). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/image_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size == 0 ? 1 : size); /* exactly size bytes: ASan sees overreads */
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    image_format_t fmt;
    char err[256] = "";
    int rc = image_decode(buf, size, 1 << 20, &rgb, &w, &h, &fmt, err, sizeof err);
    free(buf);
    if (rc == 0) {
        if (w < 1 || h < 1 || (int64_t)w * h > (1 << 20) || !rgb)
            abort();
        volatile uint8_t sink = rgb[(size_t)w * (size_t)h * 3 - 1]; /* all of it is there */
        (void)sink;
        free(rgb);
    } else if (rc != -1 || err[0] == '\0' || rgb != NULL) {
        abort();
    }
    return 0;
}
