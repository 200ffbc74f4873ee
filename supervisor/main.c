/* diffusiond: the supervisor's entry point. Parses the command line, checks the config (-t),
 * and hands over to supervisor_run. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ipc/log.h"
#include "supervisor/config.h"
#include "supervisor/supervisor.h"

#define DEFAULT_CONFIG "conf/diffusiond.conf"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: diffusiond [-c FILE] [-t] [-h]\n"
            "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
            "  -t       check the configuration and exit: 0 if it is good, 1 if not\n"
            "  -h       this help\n"
            "Signals: SIGHUP reloads the configuration, SIGTERM drains and stops.\n");
}

/* The folder of the running binary: stage programs given as relative paths live beside it. */
static int exe_dir(char *out, size_t len)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        return -1;
    path[n] = '\0';
    snprintf(out, len, "%s", dirname(path));
    return 0;
}

int main(int argc, char **argv)
{
    const char *config_path = DEFAULT_CONFIG;
    int check_only = 0, c;
    while ((c = getopt(argc, argv, "c:th")) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 't': check_only = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }
    log_init("supervisor", LOG_LEVEL_INFO);

    char dir[CONFIG_PATH_MAX];
    if (exe_dir(dir, sizeof dir) != 0) {
        log_error("cannot find the diffusiond binary's folder (/proc/self/exe)");
        return 1;
    }
    static config_t cfg;
    char *text = NULL, err[CONFIG_ERROR_MAX];
    if (supervisor_load_config(config_path, dir, &cfg, &text, err, sizeof err) != 0) {
        log_error("%s", err);
        /* -t answers yes or no; a service started with a bad config exits with the "bad
         * config" code, which systemd is told not to restart (RestartPreventExitStatus=2). */
        return check_only ? 1 : 2;
    }
    if (check_only) {
        printf("%s: ok (%d stages)\n", config_path, cfg.n_stages);
        free(text);
        return 0;
    }
    log_set_level((log_level_t)cfg.server.log_level);

    char runtime_dir[CONFIG_PATH_MAX];
    if (supervisor_runtime_dir(&cfg, runtime_dir, sizeof runtime_dir, err, sizeof err) != 0) {
        log_error("%s", err);
        free(text);
        return 1;
    }
    supervisor_t *sup = supervisor_new(config_path, dir, &cfg, text, runtime_dir);
    if (!sup) {
        log_error("out of memory");
        free(text);
        return 1;
    }
    int rc = supervisor_run(sup);
    supervisor_free(&sup);
    return rc;
}
