/* notify: the supervisor's side of the systemd service protocol (sd_notify), a no-op where
 * NOTIFY_SOCKET is unset so that diffusiond runs the same with or without systemd. */
#ifndef DIFFUSIOND_NOTIFY_H
#define DIFFUSIOND_NOTIFY_H

#include <stdint.h>

/* READY=1 plus a STATUS line. */
void notify_ready(const char *status);
/* STATUS=... alone; repeated identical lines are not re-sent. */
void notify_status(const char *status);
/* RELOADING=1 with MONOTONIC_USEC, as systemd's reload protocol wants. */
void notify_reloading(void);
void notify_stopping(void);
void notify_watchdog(void);
/* Watchdog interval in microseconds that systemd expects pings within; 0 when disabled. */
uint64_t notify_watchdog_usec(void);

#endif
