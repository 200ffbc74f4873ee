/* files: writing and copying the small files the loader tests build their broken folders
 * from. Test code only; include after <cmocka.h> (a failure fails the test). */
#ifndef DIFFUSIOND_TESTS_FILES_H
#define DIFFUSIOND_TESTS_FILES_H

#include <stdio.h>

static inline void test_copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

static inline void test_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

#endif
