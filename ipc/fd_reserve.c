/* fd_reserve: see fd_reserve.h for why a process keeps descriptors free for ZeroMQ. */
#include "ipc/fd_reserve.h"

#include <dirent.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static int64_t fd_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

long fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    return rl.rlim_cur == RLIM_INFINITY ? (long)1 << 30 : (long)rl.rlim_cur;
}

long fd_raise_limit(long *before)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        *before = -1;
        return -1;
    }
    *before = rl.rlim_cur == RLIM_INFINITY ? (long)1 << 30 : (long)rl.rlim_cur;
    if (rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl); /* on failure the old limit stands, and is read */
    }
    return fd_limit();
}

long fd_count_open(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the listing's own descriptor */
}

/* One more descriptor leaves `reserve` free when open + 1 + reserve <= limit. */
static bool fd_reserve_fits(const fd_reserve_t *r, long open)
{
    long limit = fd_limit();
    return limit < 0 || open + 1 + r->reserve <= limit;
}

bool fd_reserve_room(fd_reserve_t *r)
{
    if (!r->enabled)
        return true;
    int64_t start = fd_now_us();
    if (start - r->counted_us < r->count_gap_us)
        return !r->count_failed && fd_reserve_fits(r, r->counted + r->opened_since);
    long n = fd_count_open();
    int64_t end = fd_now_us();
    r->counts++;
    r->counted_us = end;
    r->count_gap_us = end - start >= 1000 ? FD_RESERVE_COUNT_GAP * (end - start) : 0;
    r->count_failed = n < 0;
    if (n < 0)
        return false; /* it could be read at init: now not one descriptor is left for it */
    r->counted = n;
    r->opened_since = 0;
    return fd_reserve_fits(r, n);
}

bool fd_reserve_init(fd_reserve_t *r, int reserve, bool *cut)
{
    *r = (fd_reserve_t){.reserve = reserve, .enabled = true,
                        .count_every_ms = FD_RESERVE_COUNT_EVERY_MS};
    if (cut)
        *cut = false;
    if (!fd_reserve_room(r) && r->count_failed) {
        r->enabled = false;
        return false;
    }
    long left = fd_limit() - r->counted;
    if (left >= 0 && r->reserve > left / 2) {
        r->reserve = (int)(left / 2);
        if (cut)
            *cut = true;
    }
    return true;
}

bool fd_reserve_opened(fd_reserve_t *r)
{
    if (!r->enabled)
        return true;
    r->opened_since++;
    if (fd_now_us() - r->counted_us < (int64_t)r->count_every_ms * 1000 &&
        fd_reserve_fits(r, r->counted + r->opened_since))
        return true; /* even had nothing closed since the count */
    return fd_reserve_room(r);
}
