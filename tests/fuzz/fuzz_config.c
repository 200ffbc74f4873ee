/* fuzz_config: libFuzzer target for the config parser. Any bytes must give 0 or -1 with a
 * message, never a crash; and the line reader's view of a line must never disagree with
 * libinih's (config.c reports that as an "internal error", which is a bug here). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "supervisor/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    static config_t cfg;
    char err[CONFIG_ERROR_MAX];
    int rc = config_load_string(&cfg, text, "fuzz.conf", err, sizeof err);
    free(text);

    if (rc != 0 && rc != -1)
        abort();
    if (rc == -1 && (strlen(err) == 0 || strncmp(err, "fuzz.conf", 9) != 0))
        abort(); /* every error names the file */
    if (rc == -1) {
        /* Past "fuzz.conf:LINE: ". User text is echoed in messages, but never here with a
         * ':' in it (a key ends at the first ':'), so only config.c can write these. */
        const char *what = strstr(err, ": ");
        what = what != NULL ? what + 2 : err;
        if (strncmp(what, "internal error: the line reader", 31) == 0 ||
            strncmp(what, "internal error: libinih", 23) == 0) {
            fprintf(stderr, "%s\n", err);
            abort();
        }
    }
    if (rc == 0) {
        /* What was accepted keeps the promises the supervisor relies on. */
        if (cfg.n_stages < 1 || cfg.n_stages > CONFIG_MAX_STAGES)
            abort();
        int total = 0;
        for (int i = 0; i < cfg.n_stages; i++) {
            const config_stage_t *st = &cfg.stages[i];
            if (st->replicas < 1 || st->replicas > CONFIG_MAX_REPLICAS || st->line < 1 ||
                st->name[0] == '\0' || config_find_stage(&cfg, st->name) != st)
                abort();
            total += st->replicas;
        }
        if (total > CONFIG_MAX_CHILDREN ||
            cfg.server.heartbeat_timeout_ms <= cfg.server.heartbeat_ms)
            abort();
    }
    return 0;
}
