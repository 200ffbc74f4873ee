/* test_image_codec: PNG, JPEG and WebP round trips (PNG and lossless WebP exact, JPEG and lossy
 * WebP close), the same pixels giving the same bytes, decoding of the PNG variants a client
 * may send (grey, palette, alpha, 16-bit, interlaced), and every way a file can be wrong:
 * truncated at every length, corrupted bytes, too many pixels, not an image at all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

#include "codec/image_codec.h"

/* A smooth test picture, three different ramps (a channel mix-up shows), on which JPEG's
 * chroma subsampling and quantisation lose little. */
static uint8_t *picture(int w, int h)
{
    uint8_t *p = malloc((size_t)w * (size_t)h * 3);
    assert_non_null(p);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *px = p + ((size_t)y * (size_t)w + (size_t)x) * 3;
            px[0] = (uint8_t)(x * 255 / (w - 1));
            px[1] = (uint8_t)(y * 255 / (h - 1));
            px[2] = (uint8_t)(255 - (x + y) * 255 / (w + h - 2));
        }
    return p;
}

static double mean_abs_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += abs((int)a[i] - (int)b[i]);
    return s / (double)n;
}

static void round_trip(image_format_t fmt, int quality, double max_mean_err)
{
    const int w = 48, h = 32;
    uint8_t *pic = picture(w, h), *enc, *enc2, *dec;
    size_t len, len2;
    int dw, dh;
    image_format_t got;
    char err[256];
    if (image_encode(fmt, pic, w, h, quality, &enc, &len, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(image_encode(fmt, pic, w, h, quality, &enc2, &len2, err, sizeof err), 0);
    assert_int_equal(len, len2); /* deterministic bytes */
    assert_memory_equal(enc, enc2, len);
    if (image_decode(enc, len, 1 << 20, &dec, &dw, &dh, &got, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(got, fmt);
    assert_int_equal(dw, w);
    assert_int_equal(dh, h);
    double e = mean_abs_diff(pic, dec, (size_t)w * h * 3);
    if (max_mean_err == 0)
        assert_memory_equal(pic, dec, (size_t)w * h * 3);
    else if (!(e <= max_mean_err))
        fail_msg("%s q%d: mean error %.2f > %.2f", image_format_name(fmt), quality, e,
                 max_mean_err);

    /* every truncation is an error (JPEG's included, which libjpeg only warns about), and a
     * run of corrupted bytes an error or a picture, never a crash */
    for (size_t cut = 0; cut < len; cut += (cut < 64 || cut > len - 64 ? 1 : 7)) {
        uint8_t *d2 = NULL;
        err[0] = 0;
        if (image_decode(enc, cut, 1 << 20, &d2, &dw, &dh, &got, err, sizeof err) == 0)
            fail_msg("%s cut to %zu of %zu bytes decoded", image_format_name(fmt), cut, len);
        assert_true(err[0] != 0);
        assert_null(d2);
    }
    for (size_t i = 20; i < len; i += len / 13 + 1) {
        uint8_t *bad = malloc(len), *d2;
        memcpy(bad, enc, len);
        bad[i] ^= 0x5a;
        if (image_decode(bad, len, 1 << 20, &d2, &dw, &dh, &got, err, sizeof err) == 0)
            free(d2);
        free(bad);
    }
    /* too many pixels: refused before decoding */
    uint8_t *d3 = (uint8_t *)"x";
    assert_int_equal(image_decode(enc, len, w * h - 1, &d3, &dw, &dh, &got, err, sizeof err), -1);
    assert_null(d3);
    assert_non_null(strstr(err, "larger than allowed"));
    free(pic);
    free(enc);
    free(enc2);
    free(dec);
}

static void test_png(void **state) { (void)state; round_trip(IMAGE_PNG, 0, 0); }
static void test_jpeg(void **state) { (void)state; round_trip(IMAGE_JPEG, 90, 4.0); }
static void test_webp_lossless(void **state) { (void)state; round_trip(IMAGE_WEBP, 100, 0); }
static void test_webp_lossy(void **state) { (void)state; round_trip(IMAGE_WEBP, 80, 6.0); }

/* PNG in the layouts clients send, written here with libpng itself. */
static uint8_t *write_png(int color_type, int depth, int interlace, int w, int h, size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color_type, interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {10, 20, 30}};
        png_set_PLTE(png, info, pal, 4);
    }
    png_write_info(png, info);
    int channels = color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_PALETTE ? 1
                   : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                   : color_type == PNG_COLOR_TYPE_RGB ? 3 : 4;
    size_t row_bytes = (size_t)w * (size_t)channels * (size_t)(depth / 8 ? depth / 8 : 1);
    uint8_t *row = calloc(row_bytes, 1);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < h; y++) {
            for (size_t i = 0; i < row_bytes; i++)
                row[i] = color_type == PNG_COLOR_TYPE_PALETTE ? (uint8_t)((i + (size_t)y) % 4)
                                                              : (uint8_t)(i * 7 + (size_t)y * 3);
            png_write_row(png, row);
        }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
    free(row);
    *len = size;
    return (uint8_t *)buf;
}

static void test_png_variants(void **state)
{
    (void)state;
    static const int variants[][3] = {
        {PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE},
        {PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE},
        {PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE},
        {PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE},
        {PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE},
        {PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7},
    };
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        size_t len;
        uint8_t *file = write_png(variants[v][0], variants[v][1], variants[v][2], 13, 7, &len);
        uint8_t *rgb;
        int w, h;
        image_format_t fmt;
        char err[256];
        if (image_decode(file, len, 1000, &rgb, &w, &h, &fmt, err, sizeof err) != 0)
            fail_msg("variant %zu: %s", v, err);
        assert_int_equal(w, 13);
        assert_int_equal(h, 7);
        if (variants[v][0] == PNG_COLOR_TYPE_GRAY) /* grey g becomes (g, g, g) */
            for (int i = 0; i < 13 * 7; i++)
                assert_true(rgb[3 * i] == rgb[3 * i + 1] && rgb[3 * i] == rgb[3 * i + 2]);
        if (variants[v][0] == PNG_COLOR_TYPE_PALETTE) /* index 3 of row 0 is (10, 20, 30) */
            assert_true(rgb[9] == 10 && rgb[10] == 20 && rgb[11] == 30);
        if (variants[v][0] == PNG_COLOR_TYPE_RGB_ALPHA) /* alpha dropped, colour kept as is */
            assert_true(rgb[3] == 28 && rgb[4] == 35 && rgb[5] == 42);
        free(rgb);
        free(file);
    }
}

static void test_not_an_image(void **state)
{
    (void)state;
    uint8_t *rgb;
    int w, h;
    image_format_t fmt;
    char err[256];
    const uint8_t junk[] = "GIF89a this is not supported";
    assert_int_equal(image_decode(junk, sizeof junk, 100, &rgb, &w, &h, &fmt, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a PNG, JPEG or WebP"));
    assert_int_equal(image_decode(junk, 0, 100, &rgb, &w, &h, &fmt, err, sizeof err), -1);
    assert_int_equal(image_format_parse("gif", &fmt), -1);
    assert_int_equal(image_format_parse("jpg", &fmt), 0);
    assert_int_equal(fmt, IMAGE_JPEG);
    assert_string_equal(image_format_mime(IMAGE_WEBP), "image/webp");
    uint8_t px[3] = {1, 2, 3}, *out;
    size_t len;
    assert_int_equal(image_encode(IMAGE_PNG, px, 0, 1, 0, &out, &len, err, sizeof err), -1);
    assert_int_equal(image_encode(IMAGE_JPEG, px, 1, 1, 101, &out, &len, err, sizeof err), -1);
    assert_int_equal(image_encode(IMAGE_JPEG, px, 1, 1, 0, &out, &len, err, sizeof err), 0);
    free(out);
    /* each format's own size limit, with a message that says so (and no leak: ASan) */
    uint8_t *wide = calloc(65501 * 3, 1);
    assert_int_equal(image_encode(IMAGE_JPEG, wide, 65501, 1, 90, &out, &len, err, sizeof err), -1);
    assert_non_null(strstr(err, "1..65500"));
    assert_int_equal(image_encode(IMAGE_WEBP, wide, 20000, 1, 90, &out, &len, err, sizeof err), -1);
    assert_non_null(strstr(err, "1..16383"));
    assert_int_equal(image_encode(IMAGE_JPEG, wide, 65500, 1, 90, &out, &len, err, sizeof err), 0);
    free(out);
    free(wide);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png),
        cmocka_unit_test(test_jpeg),
        cmocka_unit_test(test_webp_lossless),
        cmocka_unit_test(test_webp_lossy),
        cmocka_unit_test(test_png_variants),
        cmocka_unit_test(test_not_an_image),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
