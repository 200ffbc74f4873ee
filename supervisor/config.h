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
    /* The HTTP API's limits (read by the ingress stage). */
    uint64_t http_body_max;     /* http_body_max = 1M: request body bytes (413 above) */
    int http_prompt_max;        /* http_prompt_max = 8192: prompt bytes (also negative_prompt) */
    int http_pixels_max;        /* http_pixels_max = 4194304: width x height of one image */
    int http_steps_max;         /* http_steps_max = 100: num_inference_steps */
    int http_n_max;             /* http_n_max = 10: images per request */
    int http_queue_max;         /* http_queue_max = 64: requests accepted and not yet answered */
    int http_timeout_ms;        /* http_timeout_ms = 600000: a request unanswered this long gets
                                   504 and its jobs are cancelled */
    int http_io_timeout_ms;     /* http_io_timeout_ms = 30000: a connection idle this long while
                                   reading a request or writing an answer is closed */
    char http_api_keys[CONFIG_ARGS_MAX]; /* http_api_keys = (empty): bearer tokens separated by
                                            spaces; empty: no auth (unless a key file) */
    char http_api_key_file[CONFIG_PATH_MAX]; /* http_api_key_file = (empty): a file with one
                                                token per line */
    char http_model[CONFIG_NAME_MAX * 2]; /* http_model = (empty): the model name requests
                                             must name; empty: any model is accepted */
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
