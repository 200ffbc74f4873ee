/* test_cancel: the shared table of cancelled jobs (pipeline/cancel.h), writer and readers in
 * one process through two mappings of the same segment, as across processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/cancel.h"

static char instance[64];

static int setup(void **state)
{
    snprintf(instance, sizeof instance, "tcancel%d", (int)getpid());
    return 0;
}

static void test_mark_and_check(void **state)
{
    char err[256] = "";
    gen_cancel_table_t *t = gen_cancel_table_create(instance, 3, 7, err, sizeof err);
    assert_non_null(t);
    gen_cancel_t *c = gen_cancel_new(instance);
    assert_non_null(c);
    assert_false(gen_cancel_check(c, 3, 7, 41));
    gen_cancel_mark(t, 41);
    gen_cancel_mark(t, 43);
    assert_true(gen_cancel_check(c, 3, 7, 41));
    assert_true(gen_cancel_check(c, 3, 7, 43));
    assert_false(gen_cancel_check(c, 3, 7, 42));
    /* Another slot's jobs, and slots without a table, are never cancelled. */
    assert_false(gen_cancel_check(c, 4, 7, 41));
    assert_false(gen_cancel_check(c, 200, 7, 41));
    assert_false(gen_cancel_check(c, 3, 7, 0));
    /* The segment is private to the user. */
    char name[96], path[128];
    assert_int_equal(gen_cancel_name(instance, 3, name, sizeof name), 0);
    snprintf(path, sizeof path, "/dev/shm%s", name);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    gen_cancel_free(&c);
    assert_null(c);
    gen_cancel_table_destroy(&t);
    assert_null(t);
    assert_int_not_equal(stat(path, &sb), 0);
}

/* The ring forgets the oldest marks, never the newest. */
static void test_ring_wraps(void **state)
{
    char err[256];
    gen_cancel_table_t *t = gen_cancel_table_create(instance, 1, 2, err, sizeof err);
    assert_non_null(t);
    gen_cancel_t *c = gen_cancel_new(instance);
    for (uint64_t id = 1; id <= GEN_CANCEL_RING + 10; id++)
        gen_cancel_mark(t, id);
    for (uint64_t id = 1; id <= 10; id++)
        assert_false(gen_cancel_check(c, 1, 2, id));
    for (uint64_t id = 11; id <= GEN_CANCEL_RING + 10; id += 97)
        assert_true(gen_cancel_check(c, 1, 2, id));
    assert_true(gen_cancel_check(c, 1, 2, GEN_CANCEL_RING + 10));
    gen_cancel_free(&c);
    gen_cancel_table_destroy(&t);
}

/* A restarted origin replaces the table: its predecessor's jobs count as cancelled (nobody
 * takes their results), its own start clean, and a job of a newer origin whose table is not
 * made yet is not cancelled. */
static void test_origin_restart(void **state)
{
    char err[256];
    gen_cancel_table_t *t = gen_cancel_table_create(instance, 0, 5, err, sizeof err);
    assert_non_null(t);
    gen_cancel_t *c = gen_cancel_new(instance);
    gen_cancel_mark(t, 9);
    assert_true(gen_cancel_check(c, 0, 5, 9));
    assert_false(gen_cancel_check(c, 0, 6, 9)); /* gen 6 has no table yet */
    gen_cancel_table_destroy(&t);
    t = gen_cancel_table_create(instance, 0, 6, err, sizeof err);
    assert_non_null(t);
    assert_false(gen_cancel_check(c, 0, 6, 9));
    assert_true(gen_cancel_check(c, 0, 5, 1)); /* gen 5's jobs: origin gone */
    gen_cancel_mark(t, 9);
    assert_true(gen_cancel_check(c, 0, 6, 9));
    gen_cancel_free(&c);
    gen_cancel_table_destroy(&t);
}

/* A reader whose view is of gen 5 learns that gen 5's origin was replaced without ever
 * seeing a job of another generation: its view is looked at again after a while. */
static void test_stale_view_of_a_replaced_origin(void **state)
{
    char err[256];
    gen_cancel_table_t *t = gen_cancel_table_create(instance, 1, 5, err, sizeof err);
    assert_non_null(t);
    gen_cancel_t *c = gen_cancel_new(instance);
    assert_false(gen_cancel_check(c, 1, 5, 7)); /* the view of gen 5 is open */
    gen_cancel_table_destroy(&t);
    t = gen_cancel_table_create(instance, 1, 6, err, sizeof err); /* the origin restarted */
    assert_non_null(t);
    struct timespec pause = {0, 150 * 1000000}; /* past GEN_CANCEL_REOPEN_MS */
    nanosleep(&pause, NULL);
    assert_true(gen_cancel_check(c, 1, 5, 7)); /* gen 5's job: nobody will read its result */
    gen_cancel_free(&c);
    gen_cancel_table_destroy(&t);
}

/* Without any table nothing is cancelled, and freeing NULLs is harmless. */
static void test_no_table(void **state)
{
    gen_cancel_t *c = gen_cancel_new(instance);
    assert_false(gen_cancel_check(c, 5, 1, 1));
    assert_false(gen_cancel_check(NULL, 5, 1, 1));
    gen_cancel_mark(NULL, 1);
    gen_cancel_free(&c);
    gen_cancel_free(&c);
    gen_cancel_table_t *t = NULL;
    gen_cancel_table_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mark_and_check),
        cmocka_unit_test(test_ring_wraps),
        cmocka_unit_test(test_origin_restart),
        cmocka_unit_test(test_stale_view_of_a_replaced_origin),
        cmocka_unit_test(test_no_table),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
