/* image_codec: 8-bit RGB images to and from PNG (libpng), JPEG (libjpeg-turbo) and WebP
 * (libwebp), in memory. The encode stage and diffusiond-generate write their images with it,
 * so that the service's bytes and the CLI's are the same for the same pixels; ingress and the
 * CLI's --image read input images with it.
 *
 * Pixels are rows of width x 3 bytes (R, G, B), top row first, no padding. Every function is
 * reentrant. Decoding checks the image's size before allocating and never asserts on the
 * input: a truncated or corrupt file is an error with the library's reason. */
#ifndef DIFFUSIOND_CODEC_IMAGE_CODEC_H
#define DIFFUSIOND_CODEC_IMAGE_CODEC_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    IMAGE_PNG,
    IMAGE_JPEG,
    IMAGE_WEBP,
} image_format_t;

/* "png", "jpeg" (or "jpg"), "webp" -> 0 and *fmt; -1 for anything else. */
int image_format_parse(const char *name, image_format_t *fmt);
const char *image_format_name(image_format_t fmt);   /* "png", "jpeg", "webp" */
const char *image_format_mime(image_format_t fmt);   /* "image/png", ... */

/* Encodes rgb (width x height; each side at most 65535 for PNG, 65500 for JPEG, 16383 for
 * WebP) as fmt. quality 0..100 is JPEG's and lossy WebP's quality
 * (100 gives lossless WebP); PNG ignores it (zlib level 6, no filter heuristics beyond
 * libpng's default: the same pixels always give the same bytes). *out is malloc'd; the caller
 * free()s it. 0, or -1 with err. */
int image_encode(image_format_t fmt, const uint8_t *rgb, int width, int height, int quality,
                 uint8_t **out, size_t *out_len, char *err, size_t errlen);

/* Decodes a PNG, JPEG or WebP file (told apart by its first bytes) into 8-bit RGB: palette and
 * grey images expanded, 16-bit samples cut to their high byte, alpha dropped without blending.
 * Images of more than max_pixels pixels, or wider or taller than 65535, are refused before any
 * pixel memory is allocated. A file cut short or with corrupt data is an error, including the
 * JPEG cases libjpeg only warns about; a progressive JPEG may have at most 256 scans. Animated
 * WebP is not supported (an error). *rgb is malloc'd. 0, or -1 with err. */
int image_decode(const uint8_t *buf, size_t len, int64_t max_pixels, uint8_t **rgb, int *width,
                 int *height, image_format_t *fmt, char *err, size_t errlen);

#endif
