/* log: one line per event on stderr, with a level, for the journal.
 * Every process of diffusiond logs through this so the format is the same everywhere:
 *   "<level> <component>: message"  (systemd adds the time; the level maps to a "<N>" prefix
 * understood by journald when stderr is the journal, see log_init). */
#ifndef DIFFUSIOND_LOG_H
#define DIFFUSIOND_LOG_H

typedef enum {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
} log_level_t;

/* component names the process in every line ("supervisor", "text.0"); copied. */
void log_init(const char *component, log_level_t level);
void log_set_level(log_level_t level);
log_level_t log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns -1 for anything else. */
int log_level_parse(const char *name);

void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
