/* fd_reserve: keeps file descriptors free for ZeroMQ in a process that also opens them for
 * clients outside (the ingress's HTTP connections).
 *
 * Why: libzmq (4.3.4, and its master as of 2026) aborts the whole process when accept() on
 * one of its ipc listeners fails with EMFILE: ipc_listener.cpp asserts on every errno but a
 * few, and EMFILE is not among them. Every stage listens on ipc sockets, and a peer connects
 * whenever a replica starts or restarts; if clients held every descriptor at that moment, the
 * ingress would die. So the HTTP server stops accepting while fewer than `reserve`
 * descriptors would stay free after one more connection.
 *
 * The reserve must cover all that ZeroMQ may open once clients hold everything else: the
 * caller sizes it (stages/ingress/http.c).
 *
 * Counting open descriptors means reading /proc/self/fd, which costs in proportion to their
 * number. Between counts, the last count plus every descriptor the caller opened since (as if
 * none had closed) bounds the caller's own. It is counted anew when that bound reaches the
 * limit, or when the count is older than count_every_ms (so that what ZeroMQ opened meanwhile
 * is seen) -- but never sooner than FD_RESERVE_COUNT_GAP times the last count's cost after it:
 * with hundreds of thousands of descriptors a count takes milliseconds. The bound answers
 * meanwhile: it errs only on the safe side as to the caller's descriptors, and what ZeroMQ
 * opens comes out of the reserve. */
#ifndef DIFFUSIOND_FD_RESERVE_H
#define DIFFUSIOND_FD_RESERVE_H

#include <stdbool.h>
#include <stdint.h>

#define FD_RESERVE_COUNT_EVERY_MS 100
#define FD_RESERVE_COUNT_GAP 50 /* counting takes at most 1/50 of the time */

typedef struct {
    int reserve;        /* descriptors always left free */
    long counted;       /* open at the last count */
    long opened_since;  /* opened since that count, by the caller's word */
    int64_t counted_us; /* when, on CLOCK_MONOTONIC */
    int count_every_ms; /* the most a count is trusted: FD_RESERVE_COUNT_EVERY_MS */
    int64_t count_gap_us; /* the least time between counts: FD_RESERVE_COUNT_GAP x the cost
                             of the last one, 0 while that is under a millisecond */
    bool count_failed;  /* the last count could not open /proc/self/fd: no room is assumed */
    bool enabled;       /* false where /proc/self/fd cannot be read: nothing is held back */
    uint64_t counts;    /* times the descriptors were counted (for tests) */
} fd_reserve_t;

/* Raises the soft RLIMIT_NOFILE to the hard one: a server of many clients should not stop at
 * the 1024 a shell or a container may set. Returns the soft limit now (-1 when unreadable)
 * and sets *before to the one it had. */
long fd_raise_limit(long *before);

/* The soft RLIMIT_NOFILE (it may be changed from outside, prlimit(1)), -1 when unreadable. */
long fd_limit(void);

/* Descriptors open in this process, -1 when /proc/self/fd cannot be read (no /proc, or not
 * one descriptor left to open it with). */
long fd_count_open(void);

/* Counts once; disabled (with a false return) where counting is impossible. A reserve over
 * half of what the limit leaves is cut to that half, so that clients keep room; *cut says so
 * (may be NULL). */
bool fd_reserve_init(fd_reserve_t *r, int reserve, bool *cut);

/* The caller opened one descriptor (accepted a connection). True while one more may be
 * opened with `reserve` left free; it counts anew when the bound fails or the count is old
 * (and the gap allows). */
bool fd_reserve_opened(fd_reserve_t *r);

/* Counts anew (the gap allowing; the bound answers otherwise): true when one more may be
 * opened with `reserve` left free. */
bool fd_reserve_room(fd_reserve_t *r);

#endif
