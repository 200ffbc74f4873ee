/* test_fd_reserve: the count of open descriptors, the reserve's admission rule (one more
 * descriptor only while `reserve` would stay free, the limit read anew each time), when it
 * counts (its bound near the limit, an old count, never too soon after a costly one), the cut
 * of a reserve too big for the limit, and the raise of the limit. Each test may lower this
 * process's own soft RLIMIT_NOFILE, and restores it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ipc/fd_reserve.h"

#define MAX_OPENED 64

static struct rlimit saved;
static int opened[MAX_OPENED];
static int n_opened;

static int setup(void **state)
{
    (void)state;
    n_opened = 0;
    return getrlimit(RLIMIT_NOFILE, &saved);
}

static int teardown(void **state)
{
    (void)state;
    while (n_opened > 0)
        close(opened[--n_opened]);
    return setrlimit(RLIMIT_NOFILE, &saved);
}

static int open_one(void)
{
    int fd = dup(STDERR_FILENO);
    if (fd >= 0 && n_opened < MAX_OPENED)
        opened[n_opened++] = fd;
    return fd;
}

static void set_soft_limit(long soft)
{
    struct rlimit rl = saved;
    rl.rlim_cur = (rlim_t)soft;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
}

static void test_count_follows_open_and_close(void **state)
{
    (void)state;
    long base = fd_count_open();
    assert_true(base >= 3); /* stdin, stdout, stderr at least */
    for (int i = 0; i < 10; i++)
        assert_true(open_one() >= 0);
    assert_int_equal(fd_count_open(), base + 10);
    close(opened[--n_opened]);
    assert_int_equal(fd_count_open(), base + 9);
}

/* Room for exactly three over the reserve: the third descriptor opened says "no more". (A
 * reserve of half what the limit leaves, the most init keeps.) */
static void test_admits_until_the_reserve(void **state)
{
    (void)state;
    const int reserve = 3;
    long base = fd_count_open();
    set_soft_limit(base + 3 + reserve);
    fd_reserve_t r;
    assert_true(fd_reserve_init(&r, reserve, NULL));
    assert_int_equal(r.counted, base);
    assert_true(fd_reserve_room(&r));
    for (int i = 1; i <= 3; i++) {
        assert_true(open_one() >= 0);
        assert_int_equal(fd_reserve_opened(&r), i < 3);
    }
    assert_false(fd_reserve_room(&r));
    close(opened[--n_opened]); /* a connection closed: room for one again */
    assert_true(fd_reserve_room(&r));
}

/* The limit lowered from outside below what is open: no room, whatever the last count. */
static void test_reads_the_limit_each_time(void **state)
{
    (void)state;
    fd_reserve_t r;
    assert_true(fd_reserve_init(&r, 4, NULL));
    assert_true(fd_reserve_room(&r));
    set_soft_limit(r.counted + 4); /* one more would leave 3 */
    assert_false(fd_reserve_room(&r));
    set_soft_limit(r.counted + 5); /* one more leaves exactly 4 */
    assert_true(fd_reserve_room(&r));
}

/* Far from the limit, opening costs no count: the bound decides alone. Near it, each opening
 * is counted, so that descriptors closed meanwhile are seen. (The count's age is taken out
 * of it: a slow machine must not recount by the clock here.) */
static void test_counts_only_near_the_limit(void **state)
{
    (void)state;
    const int reserve = 4;
    long base = fd_count_open();
    set_soft_limit(base + 20 + reserve);
    fd_reserve_t r;
    assert_true(fd_reserve_init(&r, reserve, NULL));
    r.count_every_ms = 1 << 30;
    uint64_t counts = r.counts;
    for (int i = 0; i < 10; i++) {
        assert_true(open_one() >= 0);
        assert_true(fd_reserve_opened(&r));
    }
    assert_int_equal(r.counts, counts); /* base + 10 + 1 + 4 <= base + 24 throughout */
    /* Ten close and ten more open: the bound says base + 20, the truth base + 10. */
    for (int i = 0; i < 10; i++)
        close(opened[--n_opened]);
    for (int i = 0; i < 10; i++) {
        assert_true(open_one() >= 0);
        assert_true(fd_reserve_opened(&r));
    }
    assert_true(r.counts > counts); /* the bound reached the limit and a count corrected it */
    assert_int_equal(r.counted + r.opened_since, base + 10);
}

/* Descriptors opened behind the caller's back (ZeroMQ's) are seen once the count is older
 * than count_every_ms, however far the bound is from the limit. */
static void test_recounts_when_the_count_is_old(void **state)
{
    (void)state;
    fd_reserve_t r;
    assert_true(fd_reserve_init(&r, 4, NULL));
    long base = r.counted;
    for (int i = 0; i < 5; i++)
        assert_true(open_one() >= 0); /* not the caller's: not told */
    r.count_every_ms = 1 << 30;
    assert_true(open_one() >= 0);
    assert_true(fd_reserve_opened(&r));
    assert_int_equal(r.counted + r.opened_since, base + 1); /* the bound alone misses 5 */
    r.count_every_ms = 0;
    assert_true(open_one() >= 0);
    assert_true(fd_reserve_opened(&r));
    assert_int_equal(r.counted + r.opened_since, base + 7);
}

/* A count that cost much (many descriptors) is not repeated before FD_RESERVE_COUNT_GAP times
 * its cost has passed: the bound answers meanwhile, erring on the safe side. */
static void test_costly_counts_are_spaced(void **state)
{
    (void)state;
    const int reserve = 2;
    long base = fd_count_open();
    set_soft_limit(base + 2 + reserve);
    fd_reserve_t r;
    assert_true(fd_reserve_init(&r, reserve, NULL));
    assert_true(open_one() >= 0);
    assert_true(fd_reserve_opened(&r));
    assert_true(open_one() >= 0);
    assert_false(fd_reserve_opened(&r)); /* counted: base + 2 open, no room */
    uint64_t counts = r.counts;
    close(opened[--n_opened]);
    r.count_gap_us = (int64_t)1 << 40; /* as if the last count had taken very long */
    assert_false(fd_reserve_room(&r)); /* the bound still says base + 2 */
    assert_int_equal(r.counts, counts);
    r.count_gap_us = 0;
    assert_true(fd_reserve_room(&r)); /* counted: the closed one is seen */
    assert_int_equal(r.counts, counts + 1);
}

/* A reserve over half of what the limit leaves is cut to that half: clients keep room. */
static void test_reserve_cut_to_half_the_room(void **state)
{
    (void)state;
    long base = fd_count_open();
    set_soft_limit(base + 40);
    fd_reserve_t r;
    bool cut;
    assert_true(fd_reserve_init(&r, 100, &cut));
    assert_true(cut);
    assert_int_equal(r.reserve, 20);
    assert_true(fd_reserve_init(&r, 20, &cut));
    assert_false(cut);
    assert_int_equal(r.reserve, 20);
}

static void test_raise_limit_to_hard(void **state)
{
    (void)state;
    if (saved.rlim_max == RLIM_INFINITY || saved.rlim_max < 64)
        skip();
    set_soft_limit(32);
    long before, now = fd_raise_limit(&before);
    assert_int_equal(before, 32);
    assert_int_equal(now, (long)saved.rlim_max);
    assert_int_equal(fd_limit(), (long)saved.rlim_max);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_count_follows_open_and_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admits_until_the_reserve, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_the_limit_each_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counts_only_near_the_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recounts_when_the_count_is_old, setup, teardown),
        cmocka_unit_test_setup_teardown(test_costly_counts_are_spaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_cut_to_half_the_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raise_limit_to_hard, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
