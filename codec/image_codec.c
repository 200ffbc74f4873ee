/* image_codec: PNG, JPEG and WebP through their reference libraries (see the header). libpng
 * and libjpeg report errors by longjmp out of their callbacks: each codec keeps its setjmp in
 * one function; the locals it assigns after setjmp and reads after a longjmp are volatile,
 * and the structs the libraries write through pointers (error messages, output buffers) live
 * in memory, as the libraries' own examples have them. */
#include "codec/image_codec.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/encode.h>

#define MAX_SIDE 65535      /* PNG and decoding */
#define JPEG_MAX_SIDE 65500 /* libjpeg's own limit */
#define WEBP_MAX_SIDE 16383 /* the WebP format's */
#define JPEG_MAX_SCANS 256  /* a progressive file needs ~10; thousands are a CPU attack */
#define JPEG_MAX_MEMORY (512L << 20)

int image_format_parse(const char *name, image_format_t *fmt)
{
    if (!strcmp(name, "png"))
        *fmt = IMAGE_PNG;
    else if (!strcmp(name, "jpeg") || !strcmp(name, "jpg"))
        *fmt = IMAGE_JPEG;
    else if (!strcmp(name, "webp"))
        *fmt = IMAGE_WEBP;
    else
        return -1;
    return 0;
}

const char *image_format_name(image_format_t fmt)
{
    return fmt == IMAGE_PNG ? "png" : fmt == IMAGE_JPEG ? "jpeg" : "webp";
}

const char *image_format_mime(image_format_t fmt)
{
    return fmt == IMAGE_PNG ? "image/png" : fmt == IMAGE_JPEG ? "image/jpeg" : "image/webp";
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* width x height x 3 bytes, or 0 when it does not fit the limits. */
static size_t rgb_bytes(int64_t width, int64_t height, int64_t max_pixels)
{
    if (width < 1 || height < 1 || width > MAX_SIDE || height > MAX_SIDE ||
        width * height > max_pixels)
        return 0;
    return (size_t)(width * height * 3);
}

/* ---- PNG ------------------------------------------------------------------------------------ */

typedef struct {
    uint8_t *data;
    size_t len, cap;
    bool oom;
} membuf_t;

static void png_write_mem(png_structp png, png_bytep bytes, png_size_t n)
{
    membuf_t *m = png_get_io_ptr(png);
    if (m->oom)
        return;
    if (m->len + n > m->cap) {
        size_t cap = m->cap ? m->cap : 65536;
        while (cap < m->len + n)
            cap *= 2;
        uint8_t *data = realloc(m->data, cap);
        if (!data) {
            m->oom = true;
            png_error(png, "out of memory");
        }
        m->data = data;
        m->cap = cap;
    }
    memcpy(m->data + m->len, bytes, n);
    m->len += n;
}

static void png_flush_mem(png_structp png) { (void)png; }

/* libpng's messages, kept for the error that follows a longjmp. */
typedef struct {
    char msg[160];
} png_err_t;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_err_t *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* warnings (a bad ancillary chunk) do not stop a read or a write */
}

static int png_encode(const uint8_t *rgb, int width, int height, uint8_t **out, size_t *out_len,
                      char *err, size_t errlen)
{
    png_err_t perr = {""};
    membuf_t mem = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &perr, png_on_error,
                                              png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, NULL);
        set_err(err, errlen, "png: out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(mem.data);
        set_err(err, errlen, "png: %s", perr.msg);
        return -1;
    }
    png_set_write_fn(png, &mem, png_write_mem, png_flush_mem);
    png_set_compression_level(png, 6);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)width * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    *out = mem.data;
    *out_len = mem.len;
    return 0;
}

typedef struct {
    const uint8_t *data;
    size_t len, pos;
} memsrc_t;

static void png_read_mem(png_structp png, png_bytep bytes, png_size_t n)
{
    memsrc_t *s = png_get_io_ptr(png);
    if (n > s->len - s->pos)
        png_error(png, "truncated file");
    memcpy(bytes, s->data + s->pos, n);
    s->pos += n;
}

static int png_decode(const uint8_t *buf, size_t len, int64_t max_pixels, uint8_t **rgb,
                      int *width, int *height, char *err, size_t errlen)
{
    png_err_t perr = {""};
    memsrc_t src = {buf, len, 0};
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &perr, png_on_error,
                                             png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(&png, NULL, NULL);
        set_err(err, errlen, "png: out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(rows);
        free(pixels);
        set_err(err, errlen, "png: %s", perr.msg);
        return -1;
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_set_user_limits(png, MAX_SIDE, MAX_SIDE);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    size_t bytes = rgb_bytes(w, h, max_pixels);
    if (bytes == 0) {
        snprintf(perr.msg, sizeof perr.msg, "%ux%u is larger than allowed (%lld pixels)", w, h,
                 (long long)max_pixels);
        png_longjmp(png, 1);
    }
    int type = png_get_color_type(png, info);
    if (png_get_bit_depth(png, info) == 16)
        png_set_strip_16(png);
    if (type == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) {
        png_set_expand_gray_1_2_4_to_8(png);
        png_set_gray_to_rgb(png);
    }
    if (png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 3) {
        snprintf(perr.msg, sizeof perr.msg, "unexpected row layout");
        png_longjmp(png, 1);
    }
    pixels = malloc(bytes);
    rows = pixels ? malloc(sizeof *rows * h) : NULL;
    if (!rows) {
        snprintf(perr.msg, sizeof perr.msg, "out of memory");
        png_longjmp(png, 1);
    }
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = pixels + (size_t)y * w * 3;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    *rgb = pixels;
    *width = (int)w;
    *height = (int)h;
    return 0;
}

/* ---- JPEG ----------------------------------------------------------------------------------- */

typedef struct {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err_t;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_err_t *e = (jpeg_err_t *)cinfo->err;
    e->mgr.format_message(cinfo, e->msg);
    longjmp(e->jump, 1);
}

/* Warnings are counted (num_warnings) but not printed; the decoder turns any into an error. */
static void jpeg_on_message(j_common_ptr cinfo) { (void)cinfo; }

/* Our own destination: libjpeg's jpeg_mem_dest owns its buffer and may have moved it when an
 * error unwinds, so it could be neither freed nor kept. This one grows a membuf_t that the
 * caller owns whatever happens. */
typedef struct {
    struct jpeg_destination_mgr pub;
    membuf_t buf;
} jpeg_dest_t;

static int jpeg_dest_grow(jpeg_dest_t *d, size_t used)
{
    size_t cap = d->buf.cap ? d->buf.cap * 2 : 65536;
    uint8_t *data = realloc(d->buf.data, cap);
    if (!data)
        return -1;
    d->buf.data = data;
    d->buf.cap = cap;
    d->pub.next_output_byte = data + used;
    d->pub.free_in_buffer = cap - used;
    return 0;
}

static void jpeg_dest_init(j_compress_ptr c)
{
    jpeg_dest_t *d = (jpeg_dest_t *)c->dest;
    if (jpeg_dest_grow(d, 0) != 0)
        ERREXIT1(c, JERR_OUT_OF_MEMORY, 0);
}

static boolean jpeg_dest_empty(j_compress_ptr c)
{
    jpeg_dest_t *d = (jpeg_dest_t *)c->dest;
    if (jpeg_dest_grow(d, d->buf.cap) != 0) /* the whole buffer is full */
        ERREXIT1(c, JERR_OUT_OF_MEMORY, 1);
    return TRUE;
}

static void jpeg_dest_term(j_compress_ptr c)
{
    jpeg_dest_t *d = (jpeg_dest_t *)c->dest;
    d->buf.len = d->buf.cap - d->pub.free_in_buffer;
}

static int jpeg_encode(const uint8_t *rgb, int width, int height, int quality, uint8_t **out,
                       size_t *out_len, char *err, size_t errlen)
{
    struct jpeg_compress_struct c;
    jpeg_err_t jerr;
    jpeg_dest_t dest = {.pub = {.init_destination = jpeg_dest_init,
                                .empty_output_buffer = jpeg_dest_empty,
                                .term_destination = jpeg_dest_term}};
    c.err = jpeg_std_error(&jerr.mgr);
    jerr.mgr.error_exit = jpeg_on_error;
    jerr.mgr.output_message = jpeg_on_message;
    if (setjmp(jerr.jump)) {
        jpeg_destroy_compress(&c);
        free(dest.buf.data);
        set_err(err, errlen, "jpeg: %s", jerr.msg);
        return -1;
    }
    jpeg_create_compress(&c);
    c.dest = &dest.pub;
    c.image_width = (JDIMENSION)width;
    c.image_height = (JDIMENSION)height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * (size_t)width * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *out = dest.buf.data;
    *out_len = dest.buf.len;
    return 0;
}

/* Called by libjpeg as it reads: a progressive file with an absurd number of scans costs a
 * full pass over the image per scan (libjpeg-turbo's advice for untrusted input). */
static void jpeg_on_progress(j_common_ptr cinfo)
{
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->is_decompressor && d->input_scan_number > JPEG_MAX_SCANS) {
        jpeg_err_t *e = (jpeg_err_t *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", JPEG_MAX_SCANS);
        longjmp(e->jump, 1);
    }
}

static int jpeg_decode(const uint8_t *buf, size_t len, int64_t max_pixels, uint8_t **rgb,
                       int *width, int *height, char *err, size_t errlen)
{
    struct jpeg_decompress_struct d;
    jpeg_err_t jerr;
    uint8_t *volatile pixels = NULL;
    d.err = jpeg_std_error(&jerr.mgr);
    jerr.mgr.error_exit = jpeg_on_error;
    jerr.mgr.output_message = jpeg_on_message;
    if (setjmp(jerr.jump)) {
        jpeg_destroy_decompress(&d);
        free(pixels);
        set_err(err, errlen, "jpeg: %s", jerr.msg);
        return -1;
    }
    jpeg_create_decompress(&d);
    struct jpeg_progress_mgr progress = {.progress_monitor = jpeg_on_progress};
    d.progress = &progress;
    d.mem->max_memory_to_use = JPEG_MAX_MEMORY;
    jpeg_mem_src(&d, buf, (unsigned long)len);
    jpeg_read_header(&d, TRUE);
    if (d.jpeg_color_space == JCS_CMYK || d.jpeg_color_space == JCS_YCCK) {
        snprintf(jerr.msg, sizeof jerr.msg, "CMYK images are not supported");
        longjmp(jerr.jump, 1);
    }
    d.out_color_space = JCS_RGB;
    size_t bytes = rgb_bytes(d.image_width, d.image_height, max_pixels);
    if (bytes == 0) {
        snprintf(jerr.msg, sizeof jerr.msg, "%ux%u is larger than allowed (%lld pixels)",
                 d.image_width, d.image_height, (long long)max_pixels);
        longjmp(jerr.jump, 1);
    }
    jpeg_start_decompress(&d);
    if (d.output_components != 3) {
        snprintf(jerr.msg, sizeof jerr.msg, "unexpected %d components", d.output_components);
        longjmp(jerr.jump, 1);
    }
    pixels = malloc(bytes);
    if (!pixels) {
        snprintf(jerr.msg, sizeof jerr.msg, "out of memory");
        longjmp(jerr.jump, 1);
    }
    while (d.output_scanline < d.output_height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)d.output_scanline * d.output_width * 3);
        jpeg_read_scanlines(&d, &row, 1);
    }
    jpeg_finish_decompress(&d);
    /* libjpeg only warns about a file cut short (and pads the image with grey) or corrupt
     * data it can skip: either way the picture is not the one that was sent */
    if (jerr.mgr.num_warnings > 0) {
        jerr.mgr.format_message((j_common_ptr)&d, jerr.msg);
        longjmp(jerr.jump, 1);
    }
    *width = (int)d.output_width;
    *height = (int)d.output_height;
    jpeg_destroy_decompress(&d);
    *rgb = pixels;
    return 0;
}

/* ---- WebP ----------------------------------------------------------------------------------- */

static int webp_encode(const uint8_t *rgb, int width, int height, int quality, uint8_t **out,
                       size_t *out_len, char *err, size_t errlen)
{
    uint8_t *data = NULL;
    size_t n = quality >= 100
                   ? WebPEncodeLosslessRGB(rgb, width, height, width * 3, &data)
                   : WebPEncodeRGB(rgb, width, height, width * 3, (float)quality, &data);
    if (n == 0 || !data) {
        set_err(err, errlen, "webp: encoding failed (%dx%d)", width, height);
        return -1;
    }
    /* WebPFree's memory is not malloc's in every build: hand the caller a malloc'd copy */
    *out = malloc(n);
    if (!*out) {
        WebPFree(data);
        set_err(err, errlen, "webp: out of memory");
        return -1;
    }
    memcpy(*out, data, n);
    WebPFree(data);
    *out_len = n;
    return 0;
}

static int webp_decode(const uint8_t *buf, size_t len, int64_t max_pixels, uint8_t **rgb,
                       int *width, int *height, char *err, size_t errlen)
{
    int w, h;
    if (!WebPGetInfo(buf, len, &w, &h)) {
        set_err(err, errlen, "webp: not a valid WebP file");
        return -1;
    }
    size_t bytes = rgb_bytes(w, h, max_pixels);
    if (bytes == 0) {
        set_err(err, errlen, "webp: %dx%d is larger than allowed (%lld pixels)", w, h,
                (long long)max_pixels);
        return -1;
    }
    uint8_t *pixels = malloc(bytes);
    if (!pixels) {
        set_err(err, errlen, "webp: out of memory");
        return -1;
    }
    if (!WebPDecodeRGBInto(buf, len, pixels, bytes, w * 3)) {
        free(pixels);
        set_err(err, errlen, "webp: corrupt or truncated file");
        return -1;
    }
    *rgb = pixels;
    *width = w;
    *height = h;
    return 0;
}

/* ---- dispatch ------------------------------------------------------------------------------- */

int image_encode(image_format_t fmt, const uint8_t *rgb, int width, int height, int quality,
                 uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    const int side = fmt == IMAGE_JPEG ? JPEG_MAX_SIDE : fmt == IMAGE_WEBP ? WEBP_MAX_SIDE
                                                                            : MAX_SIDE;
    if (width < 1 || height < 1 || width > side || height > side) {
        set_err(err, errlen, "%s: cannot encode a %dx%d image (each side 1..%d)",
                image_format_name(fmt), width, height, side);
        return -1;
    }
    if (quality < 0 || quality > 100) {
        set_err(err, errlen, "%s: quality %d is outside 0..100", image_format_name(fmt), quality);
        return -1;
    }
    switch (fmt) {
    case IMAGE_PNG: return png_encode(rgb, width, height, out, out_len, err, errlen);
    case IMAGE_JPEG: return jpeg_encode(rgb, width, height, quality, out, out_len, err, errlen);
    case IMAGE_WEBP: return webp_encode(rgb, width, height, quality, out, out_len, err, errlen);
    }
    set_err(err, errlen, "unknown image format");
    return -1;
}

int image_decode(const uint8_t *buf, size_t len, int64_t max_pixels, uint8_t **rgb, int *width,
                 int *height, image_format_t *fmt, char *err, size_t errlen)
{
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    *rgb = NULL;
    *width = *height = 0;
    if (len >= 8 && memcmp(buf, png_magic, 8) == 0) {
        *fmt = IMAGE_PNG;
        return png_decode(buf, len, max_pixels, rgb, width, height, err, errlen);
    }
    if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) {
        *fmt = IMAGE_JPEG;
        return jpeg_decode(buf, len, max_pixels, rgb, width, height, err, errlen);
    }
    if (len >= 12 && memcmp(buf, "RIFF", 4) == 0 && memcmp(buf + 8, "WEBP", 4) == 0) {
        *fmt = IMAGE_WEBP;
        return webp_decode(buf, len, max_pixels, rgb, width, height, err, errlen);
    }
    set_err(err, errlen, "not a PNG, JPEG or WebP image");
    return -1;
}
