/* config: the diffusiond configuration file, parsed into plain structs.
 *
 * The file is INI (parsed by libinih): sections [server], [model] and one [stage.NAME] per
 * stage. Every key is a row of a directive table in config.c (key, type, offset, default,
 * bounds), documented with its default in conf/diffusiond.conf. The supervisor and every stage
 * parse the same file, so a stage sees exactly what the supervisor validated.
 * Errors name the file, the line and the key: "FILE:LINE: [section] key: what is wrong". */
#ifndef DIFFUSIOND_CONFIG_H
#define DIFFUSIOND_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_STAGES 16
#define CONFIG_MAX_REPLICAS 8
#define CONFIG_NAME_MAX 32     /* stage names: [a-z0-9_], 1..31 characters */
#define CONFIG_PATH_MAX 512
#define CONFIG_ARGS_MAX 512
#define CONFIG_ERROR_MAX 512
#define CONFIG_MAX_CHILDREN 128 /* replicas over all stages: the supervisor's child table */
#define CONFIG_MAX_CUDA_INDEX 63 /* device = cuda:0 .. cuda:63 */

/* Device a stage runs on: cpu, or cuda:N. */
typedef struct {
    bool cuda;
    int index; /* CUDA ordinal; 0 for cpu */
} config_device_t;

typedef struct {
    char listen[128];           /* listen = 127.0.0.1:8000 */
    char instance[CONFIG_NAME_MAX]; /* instance = diffusiond; names shm segments and sockets */
    char runtime_dir[CONFIG_PATH_MAX]; /* runtime_dir = (empty: $RUNTIME_DIRECTORY, else
                                           $XDG_RUNTIME_DIR/diffusiond, else /tmp/diffusiond-UID) */
    int log_level;              /* log_level = info (a log_level_t) */
    int heartbeat_ms;           /* heartbeat_ms = 1000 */
    int heartbeat_timeout_ms;   /* heartbeat_timeout_ms = 10000: a silent stage is killed */
    int ready_timeout_ms;       /* ready_timeout_ms = 120000: start-up (weights) deadline */
    int drain_timeout_ms;       /* drain_timeout_ms = 30000: SIGTERM waits this long for jobs */
    int stop_timeout_ms;        /* stop_timeout_ms = 5000: then SIGKILL */
    int restart_backoff_ms;     /* restart_backoff_ms = 100: first restart delay, doubling */
    int restart_backoff_max_ms; /* restart_backoff_max_ms = 30000 */
    int restart_budget;         /* restart_budget = 10 restarts ... */
    int restart_window_ms;      /* restart_window_ms = 300000 ... per this window, per replica */
    int throttle_ms;            /* throttle_ms = 10000: delay for a stage that died before its
                                   first job (likely to die again the same way) */
} config_server_t;

typedef struct {
    char path[CONFIG_PATH_MAX]; /* path = (empty): diffusers model folder */
    char dtype[8];              /* dtype = f32: f32, bf16 or f16 for weights in memory */
} config_model_t;

typedef struct {
    char name[CONFIG_NAME_MAX];     /* from the section header [stage.NAME] */
    char program[CONFIG_PATH_MAX];  /* program = (empty: diffusiond-NAME beside diffusiond) */
    char args[CONFIG_ARGS_MAX];     /* args = (empty): extra arguments, split on spaces */
    int replicas;                   /* replicas = 1 (1..8) */
    config_device_t device;         /* device = cpu */
    int threads;                    /* threads = 0: 0 means every core */
    uint64_t pool_size;             /* pool_size = 64M: bytes, K/M/G suffixes; 0: no pool */
    int batch_size;                 /* batch_size = 1 */
    int batch_wait_ms;              /* batch_wait_ms = 0 */
    int queue_depth;                /* queue_depth = 16: ZeroMQ high-water mark, in jobs */
    int line;                       /* line of the section header, for messages */
} config_stage_t;

typedef struct {
    char path[CONFIG_PATH_MAX];     /* the file this was read from */
    config_server_t server;
    config_model_t model;
    int n_stages;
    config_stage_t stages[CONFIG_MAX_STAGES]; /* in file order */
} config_t;

/* Fills *cfg with every default (and no stages). */
void config_defaults(config_t *cfg);

/* Reads FILE into *cfg (defaults first). Returns 0, or -1 with a message in err
 * ("FILE:LINE: [section] key: ..."; FILE alone where the file cannot be read).
 * On error *cfg is unspecified: parse into a scratch config and copy on success. */
int config_load(config_t *cfg, const char *path, char *err, size_t errlen);

/* Same, from a string (tests and the fuzz target); name stands for the file in messages. */
int config_load_string(config_t *cfg, const char *text, const char *name, char *err, size_t errlen);

/* The stage called name, or NULL. */
const config_stage_t *config_find_stage(const config_t *cfg, const char *name);

/* Parses "64M", "1G", "4096" (K/M/G are powers of 1024). Returns 0 or -1. */
int config_parse_size(const char *text, uint64_t *out);

/* Parses true/false, yes/no, on/off, 1/0 (any case). Returns 0 or -1. */
int config_parse_bool(const char *text, bool *out);

/* Parses "cpu" or "cuda:N" with N 0..CONFIG_MAX_CUDA_INDEX. Returns 0 or -1. */
int config_parse_device(const char *text, config_device_t *out);

#endif
