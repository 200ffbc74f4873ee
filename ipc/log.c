/* log: leveled one-line logging to stderr (see log.h). One write(2) per line so that lines of
 * concurrent processes sharing the journal stream never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static char log_component[64] = "diffusiond";
static log_level_t log_level = LOG_LEVEL_INFO;
/* journald reads a "<N>" syslog priority prefix on each line when stderr is the journal
 * (systemd sets JOURNAL_STREAM then); elsewhere the level is spelled out. */
static int log_journal_prefix;

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};
static const int log_syslog_priority[] = {3, 4, 6, 7};

void log_init(const char *component, log_level_t level)
{
    snprintf(log_component, sizeof log_component, "%s", component);
    log_level = level;
    log_journal_prefix = getenv("JOURNAL_STREAM") != NULL;
}

void log_set_level(log_level_t level) { log_level = level; }

log_level_t log_get_level(void) { return log_level; }

int log_level_parse(const char *name)
{
    for (int i = 0; i < (int)(sizeof log_level_names / sizeof log_level_names[0]); i++)
        if (strcasecmp(name, log_level_names[i]) == 0)
            return i;
    return -1;
}

void log_msg(log_level_t level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    char line[1024];
    int n;
    if (log_journal_prefix)
        n = snprintf(line, sizeof line, "<%d>%s: ", log_syslog_priority[level], log_component);
    else
        n = snprintf(line, sizeof line, "%-5s %s: ", log_level_names[level], log_component);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;  /* truncated: still one line */
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;  /* nowhere to report a failure to log */
}
