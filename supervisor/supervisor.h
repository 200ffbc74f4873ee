/* supervisor: spawns every stage replica, watches it over the control channel, restarts it when
 * it dies, tells systemd how things stand, reloads the config on SIGHUP and drains on SIGTERM.
 * It never maps tensor memory: it only removes a dead owner's segment name. */
#ifndef DIFFUSIOND_SUPERVISOR_H
#define DIFFUSIOND_SUPERVISOR_H

#include <stddef.h>

#include "supervisor/config.h"

typedef struct supervisor supervisor_t;

/* Reads and validates the config file, including that every stage program can be executed.
 * exe_dir: the folder of the diffusiond binary, against which relative programs resolve.
 * Returns 0, or -1 with "FILE:LINE: [section] key: ..." in err. *text receives the file's
 * contents (malloc'd) so that stages get exactly what was checked. */
int supervisor_load_config(const char *path, const char *exe_dir, config_t *cfg, char **text,
                           char *err, size_t errlen);

/* Resolves the runtime directory (config, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/diffusiond,
 * /tmp/diffusiond-UID) and creates it with mode 0700. */
int supervisor_runtime_dir(const config_t *cfg, char *out, size_t outlen, char *err, size_t errlen);

supervisor_t *supervisor_new(const char *config_path, const char *exe_dir, const config_t *cfg,
                             char *config_text, const char *runtime_dir);
/* Runs until stopped; returns the process exit code: 0 after a stop (also when the drain ran
 * out of time and jobs were cut short, which is logged), 1 when it could not start. */
int supervisor_run(supervisor_t *sup);
void supervisor_free(supervisor_t **sup);

#endif
