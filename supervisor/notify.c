/* notify: sd_notify messages for systemd (see notify.h). */
#include "supervisor/notify.h"

#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "ipc/log.h"

static char notify_last_status[256];

static void notify_send(const char *text)
{
    /* unset_environment = 0: stages do not inherit NOTIFY_SOCKET anyway (the supervisor
     * builds their environment), and a reload must still be able to notify. */
    int rc = sd_notify(0, text);
    if (rc < 0)
        log_warn("sd_notify failed: %s", strerror(-rc));
}

void notify_ready(const char *status)
{
    char buf[320];
    snprintf(buf, sizeof buf, "READY=1\nSTATUS=%s", status);
    snprintf(notify_last_status, sizeof notify_last_status, "%s", status);
    notify_send(buf);
}

void notify_status(const char *status)
{
    if (strcmp(status, notify_last_status) == 0)
        return;
    snprintf(notify_last_status, sizeof notify_last_status, "%s", status);
    char buf[320];
    snprintf(buf, sizeof buf, "STATUS=%s", status);
    notify_send(buf);
}

void notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char buf[128];
    snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    notify_send(buf);
}

void notify_stopping(void) { notify_send("STOPPING=1"); }

void notify_watchdog(void) { notify_send("WATCHDOG=1"); }

uint64_t notify_watchdog_usec(void)
{
    uint64_t usec = 0;
    return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}
