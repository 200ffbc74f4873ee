/* supervisor: the diffusiond main process (see supervisor.h).
 * In the manner of nginx's and PostgreSQL's masters: signal handlers set flags and wake the
 * loop through a pipe; the loop reaps children, reads the control socket, restarts what died,
 * and tells systemd. Child state lives in a fixed table of slots, one per stage replica. */
#include "supervisor/supervisor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ipc/log.h"
#include "ipc/pool.h"
#include "ipc/proto.h"
#include "supervisor/notify.h"

#define SUP_MAX_ARGS (16 + CONFIG_ARGS_MAX / 2) /* fixed arguments + every word of args */
#define SUP_IDENTITY_MAX 256
#define SUP_BUDGET_MAX 101 /* restart times remembered per slot: restart_budget is <= 100 */

typedef enum {
    SLOT_IDLE,     /* not started yet, or waiting for its restart time */
    SLOT_RUNNING,  /* a process exists */
    SLOT_FAILED,   /* bad config or restart budget spent: waits for a reload */
    SLOT_STOPPED,  /* shut down with the service */
} slot_run_t;

typedef struct {
    int stage;              /* index into cfg.stages */
    uint32_t replica;
    uint32_t index;         /* slot number, the pool id on the wire */
    slot_run_t run;
    pid_t pid;
    uint32_t gen;           /* of the current or last process; 0 before the first */
    bool hello, ready;
    uint8_t identity[SUP_IDENTITY_MAX]; /* ROUTER routing id of its control socket */
    size_t identity_len;
    int64_t started_ms, ready_ms, last_heartbeat_ms, next_start_ms;
    int64_t last_kill_ms;   /* when we last sent it SIGKILL: one kill per timeout */
    int backoff_ms;
    bool restart_now;       /* a reload asked it to stop: respawn at once, no backoff */
    bool retiring;          /* ... and it is finishing its jobs first (RETIRING in the roster) */
    int64_t retire_deadline_ms; /* SIGTERM if it has not exited by then */
    int64_t restart_times[SUP_BUDGET_MAX];
    int n_restart_times;
    unsigned restarts;
    proto_heartbeat_t stats;
} slot_t;

typedef enum { PHASE_STARTING, PHASE_RUNNING, PHASE_DRAINING, PHASE_STOPPING } phase_t;

struct supervisor {
    config_t cfg;
    char *config_text;
    char config_path[CONFIG_PATH_MAX];
    char exe_dir[CONFIG_PATH_MAX];
    char runtime_dir[CONFIG_PATH_MAX];
    char snapshot[CONFIG_PATH_MAX + 32]; /* the config file the stages read */
    unsigned n_snapshots;

    slot_t slots[PROTO_MAX_SLOTS];
    uint32_t n_slots;
    uint32_t next_gen;
    uint64_t roster_seq;
    bool roster_dirty;

    void *zctx, *control;
    int lock_fd;            /* holds the instance name while we run */
    int dir_lock_fd;        /* holds <runtime_dir>/lock while we run */
    phase_t phase;
    int64_t phase_deadline_ms;
    bool notified_ready;
    uint64_t watchdog_usec;
    int64_t next_watchdog_ms, next_status_ms;
    int exit_code;
};

static volatile sig_atomic_t sup_got_term, sup_got_hup, sup_got_chld;
static int sup_wake_pipe[2] = {-1, -1};

static void sup_on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGTERM || sig == SIGINT)
        sup_got_term = 1;
    else if (sig == SIGHUP)
        sup_got_hup = 1;
    else if (sig == SIGCHLD)
        sup_got_chld = 1;
    ssize_t w = write(sup_wake_pipe[1], "s", 1);
    (void)w; /* a full pipe wakes the loop just the same */
    errno = saved;
}

static int64_t sup_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *sup_stage_name(const supervisor_t *sup, const slot_t *s)
{
    return sup->cfg.stages[s->stage].name;
}

/* ---- configuration ------------------------------------------------------------------------- */

static void sup_program_path(const config_stage_t *st, const char *exe_dir, char *out, size_t len)
{
    if (st->program[0] == '/')
        snprintf(out, len, "%s", st->program);
    else if (st->program[0])
        snprintf(out, len, "%s/%s", exe_dir, st->program);
    else
        snprintf(out, len, "%s/diffusiond-%s", exe_dir, st->name);
}

static char *sup_read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
        if (len + 1 == cap) {
            if (cap >= (1u << 20)) { /* a config file has no business being this large */
                snprintf(err, errlen, "%s: larger than 1 MiB", path);
                free(buf);
                buf = NULL;
                break;
            }
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    if (buf)
        buf[len] = '\0';
    else if (!err[0])
        snprintf(err, errlen, "%s: out of memory", path);
    fclose(f);
    return buf;
}

/* What the generation pipeline's stages (named by convention: ingress, text, denoise, vae,
 * encode) need and the generic directive table cannot say, checked before anything starts, so
 * that `diffusiond -t` refuses a config that could never become ready: one ingress process
 * (one listening socket), a readable key file, a tensor pool for every model stage that runs
 * its own program (their outputs live there). */
static int sup_check_pipeline(const config_t *cfg, const char *path, char *err, size_t errlen)
{
    static const char *const model_stages[] = {"text", "denoise", "vae", "encode"};
    const config_stage_t *ingress = config_find_stage(cfg, "ingress");
    if (ingress && ingress->replicas != 1) {
        snprintf(err, errlen, "%s:%d: [stage.ingress] replicas: %d; the ingress listens on one "
                 "socket: 1", path, ingress->line, ingress->replicas);
        return -1;
    }
    const char *keys = cfg->server.http_api_key_file;
    if (ingress && keys[0] && access(keys, R_OK) != 0) {
        snprintf(err, errlen, "%s: [server] http_api_key_file: cannot read %s: %s", path, keys,
                 strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < sizeof model_stages / sizeof model_stages[0]; i++) {
        const config_stage_t *st = config_find_stage(cfg, model_stages[i]);
        /* only the real model stage (its default program): a stand-in may need no pool */
        if (st && !st->program[0] && st->pool_size == 0) {
            snprintf(err, errlen, "%s:%d: [stage.%s] pool_size: 0; the %s stage's outputs live "
                     "in its pool", path, st->line, st->name, st->name);
            return -1;
        }
    }
    return 0;
}

int supervisor_load_config(const char *path, const char *exe_dir, config_t *cfg, char **text,
                           char *err, size_t errlen)
{
    err[0] = '\0';
    char *buf = sup_read_file(path, err, errlen);
    if (!buf)
        return -1;
    if (config_load_string(cfg, buf, path, err, errlen) != 0) {
        free(buf);
        return -1;
    }
    snprintf(cfg->path, sizeof cfg->path, "%s", path);
    int total = 0;
    for (int i = 0; i < cfg->n_stages; i++) {
        char prog[CONFIG_PATH_MAX * 2];
        sup_program_path(&cfg->stages[i], exe_dir, prog, sizeof prog);
        if (access(prog, X_OK) != 0) {
            snprintf(err, errlen, "%s:%d: [stage.%s] program: cannot execute %s: %s", path,
                     cfg->stages[i].line, cfg->stages[i].name, prog, strerror(errno));
            free(buf);
            return -1;
        }
        total += cfg->stages[i].replicas;
    }
    if (total > PROTO_MAX_SLOTS) {
        snprintf(err, errlen, "%s: %d stage replicas in all, at most %d", path, total,
                 PROTO_MAX_SLOTS);
        free(buf);
        return -1;
    }
    if (sup_check_pipeline(cfg, path, err, errlen) != 0) {
        free(buf);
        return -1;
    }
    *text = buf;
    return 0;
}

int supervisor_runtime_dir(const config_t *cfg, char *out, size_t outlen, char *err, size_t errlen)
{
    const char *env;
    if (cfg->server.runtime_dir[0])
        snprintf(out, outlen, "%s", cfg->server.runtime_dir);
    else if ((env = getenv("RUNTIME_DIRECTORY")) && env[0])
        snprintf(out, outlen, "%.*s", (int)strcspn(env, ":"), env); /* systemd may list several */
    else if ((env = getenv("XDG_RUNTIME_DIR")) && env[0])
        snprintf(out, outlen, "%s/diffusiond", env);
    else
        snprintf(out, outlen, "/tmp/diffusiond-%u", (unsigned)getuid());
    if (mkdir(out, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "runtime directory %s: %s", out, strerror(errno));
        return -1;
    }
    /* In a shared place such as /tmp, refuse a directory someone else made for us. */
    struct stat sb;
    if (lstat(out, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != getuid()) {
        snprintf(err, errlen, "runtime directory %s: not a directory owned by uid %u", out,
                 (unsigned)getuid());
        return -1;
    }
    /* ZeroMQ ipc:// paths must fit a sockaddr_un (108 bytes) with "/<stage>.<replica>". */
    if (strlen(out) + CONFIG_NAME_MAX + 16 > 107) { /* "/<stage>.<replica>.results" */
        snprintf(err, errlen, "runtime directory %s: path too long for a unix socket", out);
        return -1;
    }
    return 0;
}

/* Writes the validated config text where stages read it, so that a file edited after the
 * check can never reach a stage unchecked. */
static int sup_write_snapshot(supervisor_t *sup)
{
    char path[sizeof sup->snapshot];
    snprintf(path, sizeof path, "%s/config.%u.conf", sup->runtime_dir, sup->n_snapshots + 1);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_error("cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(sup->config_text);
    ssize_t w = write(fd, sup->config_text, len);
    close(fd);
    if (w != (ssize_t)len) {
        log_error("cannot write %s", path);
        return -1;
    }
    /* Earlier copies stay until the service stops: a stage started just before a reload may
     * not have read its copy yet. */
    snprintf(sup->snapshot, sizeof sup->snapshot, "%s", path);
    sup->n_snapshots++;
    return 0;
}

/* ---- control channel ------------------------------------------------------------------------- */

static void sup_send_to(supervisor_t *sup, slot_t *s, const proto_msg_t *msg)
{
    if (s->run != SLOT_RUNNING || !s->hello)
        return;
    proto_buf_t buf;
    char err[256];
    if (proto_encode(msg, &buf, err, sizeof err) != 0) {
        log_error("cannot encode %s: %s", proto_msg_type_name(msg->type), err);
        return;
    }
    /* ROUTER drops what it cannot deliver at once: a stuck stage is the heartbeat's problem. */
    if (zmq_send(sup->control, s->identity, s->identity_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
        zmq_send(sup->control, buf.data, buf.size, ZMQ_DONTWAIT);
    proto_buf_free(&buf);
}

static proto_slot_state_t sup_slot_state(const supervisor_t *sup, const slot_t *s)
{
    /* Once the service stops, nothing that is down comes back: jobs for it fail at once
     * instead of waiting out the drain. */
    if (s->run == SLOT_FAILED || (s->run != SLOT_RUNNING && sup->phase >= PHASE_DRAINING))
        return PROTO_SLOT_FAILED;
    if (s->run != SLOT_RUNNING)
        return PROTO_SLOT_DOWN;
    if (!s->ready)
        return PROTO_SLOT_STARTING;
    if (sup->phase >= PHASE_DRAINING)
        return PROTO_SLOT_DRAINING;
    return s->retiring ? PROTO_SLOT_RETIRING : PROTO_SLOT_UP;
}

static void sup_fill_roster(supervisor_t *sup, proto_roster_t *r)
{
    r->seq = ++sup->roster_seq;
    r->n = sup->n_slots;
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        const slot_t *s = &sup->slots[i];
        proto_roster_entry_t *e = &r->entries[i];
        memset(e, 0, sizeof *e);
        e->slot = s->index;
        snprintf(e->stage, sizeof e->stage, "%s", sup_stage_name(sup, s));
        e->replica = s->replica;
        e->gen = s->gen;
        e->state = (uint8_t)sup_slot_state(sup, s);
    }
}

/* The whole table to every stage that said hello: a stage never misses a change. */
static void sup_broadcast_roster(supervisor_t *sup)
{
    proto_msg_t *msg = calloc(1, sizeof *msg);
    if (!msg) {
        log_error("out of memory sending the roster");
        return; /* roster_dirty stays set: the next turn tries again */
    }
    msg->type = PROTO_MSG_ROSTER;
    sup_fill_roster(sup, &msg->u.roster);
    for (uint32_t i = 0; i < sup->n_slots; i++)
        sup_send_to(sup, &sup->slots[i], msg);
    free(msg);
    sup->roster_dirty = false;
}

static void sup_broadcast(supervisor_t *sup, proto_msg_type_t type)
{
    proto_msg_t msg = {.type = type};
    for (uint32_t i = 0; i < sup->n_slots; i++)
        sup_send_to(sup, &sup->slots[i], &msg);
}

static slot_t *sup_slot_for(supervisor_t *sup, uint32_t slot, uint32_t gen)
{
    if (slot >= sup->n_slots)
        return NULL;
    slot_t *s = &sup->slots[slot];
    return s->run == SLOT_RUNNING && s->gen == gen ? s : NULL;
}

static void sup_handle_message(supervisor_t *sup, const uint8_t *id, size_t id_len,
                               const void *frame, size_t size)
{
    proto_msg_t *msg = malloc(sizeof *msg);
    char err[256];
    if (!msg)
        return;
    if (proto_decode(frame, size, msg, err, sizeof err) != 0) {
        log_warn("dropping a control message: %s", err);
        free(msg);
        return;
    }
    slot_t *s = NULL;
    int64_t now = sup_now_ms();
    switch (msg->type) {
    case PROTO_MSG_HELLO:
        s = sup_slot_for(sup, msg->u.hello.slot, msg->u.hello.gen);
        if (!s || strcmp(msg->u.hello.stage, sup_stage_name(sup, s)) != 0) {
            log_warn("hello from an unknown process (slot %u gen %u)", msg->u.hello.slot,
                     msg->u.hello.gen);
            break;
        }
        if (id_len > SUP_IDENTITY_MAX)
            break;
        memcpy(s->identity, id, id_len);
        s->identity_len = id_len;
        s->hello = true;
        s->last_heartbeat_ms = now;
        sup->roster_dirty = true; /* it needs the table too */
        if (sup->phase == PHASE_DRAINING) { /* started during the drain: it must not make work */
            proto_msg_t drain = {.type = PROTO_MSG_DRAIN};
            sup_send_to(sup, s, &drain);
        }
        break;
    case PROTO_MSG_READY:
        s = sup_slot_for(sup, msg->u.ready.slot, msg->u.ready.gen);
        if (!s || !s->hello)
            break;
        if (!s->ready)
            log_info("%s.%u ready (pid %d, generation %u, %lld ms)", sup_stage_name(sup, s),
                     s->replica, (int)s->pid, s->gen, (long long)(now - s->started_ms));
        s->ready = true;
        s->ready_ms = now;
        s->last_heartbeat_ms = now;
        sup->roster_dirty = true;
        break;
    case PROTO_MSG_HEARTBEAT:
        s = sup_slot_for(sup, msg->u.heartbeat.slot, msg->u.heartbeat.gen);
        if (!s)
            break;
        s->stats = msg->u.heartbeat;
        s->last_heartbeat_ms = now;
        break;
    default:
        log_warn("dropping an unexpected %s message", proto_msg_type_name(msg->type));
        break;
    }
    free(msg);
}

static void sup_read_control(supervisor_t *sup)
{
    for (int i = 0; i < 256; i++) {
        uint8_t id[SUP_IDENTITY_MAX + 1];
        int id_len = zmq_recv(sup->control, id, sizeof id, ZMQ_DONTWAIT);
        if (id_len < 0)
            return;
        int more = 0;
        size_t more_len = sizeof more;
        zmq_getsockopt(sup->control, ZMQ_RCVMORE, &more, &more_len);
        if (!more)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sup->control, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        if (zmq_msg_size(&m) <= PROTO_MAX_FRAME && !zmq_msg_more(&m) &&
            (size_t)id_len <= SUP_IDENTITY_MAX)
            sup_handle_message(sup, id, (size_t)id_len, zmq_msg_data(&m), zmq_msg_size(&m));
        else
            log_warn("dropping a malformed control message");
        while (zmq_msg_more(&m)) { /* discard extra parts */
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, sup->control, ZMQ_DONTWAIT) < 0)
                break;
        }
        zmq_msg_close(&m);
    }
}

/* ---- processes ---------------------------------------------------------------------------- */

static void sup_spawn(supervisor_t *sup, slot_t *s)
{
    const config_stage_t *st = &sup->cfg.stages[s->stage];
    char prog[CONFIG_PATH_MAX * 2], replica[16], slotno[16], gen[16];
    sup_program_path(st, sup->exe_dir, prog, sizeof prog);
    uint32_t g = ++sup->next_gen;
    snprintf(replica, sizeof replica, "%u", s->replica);
    snprintf(slotno, sizeof slotno, "%u", s->index);
    snprintf(gen, sizeof gen, "%u", g);

    /* Arguments are built before fork: the child only execs. */
    char args_copy[CONFIG_ARGS_MAX];
    snprintf(args_copy, sizeof args_copy, "%s", st->args);
    char *argv[SUP_MAX_ARGS];
    int argc = 0;
    argv[argc++] = prog;
    argv[argc++] = "--config";
    argv[argc++] = sup->snapshot;
    argv[argc++] = "--stage";
    argv[argc++] = (char *)st->name;
    argv[argc++] = "--replica";
    argv[argc++] = replica;
    argv[argc++] = "--slot";
    argv[argc++] = slotno;
    argv[argc++] = "--gen";
    argv[argc++] = gen;
    argv[argc++] = "--runtime-dir";
    argv[argc++] = sup->runtime_dir;
    argv[argc++] = "--";
    char *save = NULL;
    for (char *tok = strtok_r(args_copy, " \t", &save); tok && argc < SUP_MAX_ARGS - 1;
         tok = strtok_r(NULL, " \t", &save))
        argv[argc++] = tok;
    argv[argc] = NULL;

    /* The environment, less what is for the supervisor alone: only it speaks to systemd. */
    extern char **environ;
    size_t n_env = 0;
    while (environ[n_env])
        n_env++;
    char **envp = calloc(n_env + 2, sizeof *envp);
    if (!envp) {
        log_error("out of memory starting %s.%u", st->name, s->replica);
        s->next_start_ms = sup_now_ms() + 1000;
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (strncmp(environ[i], "NOTIFY_SOCKET=", 14) != 0 &&
            strncmp(environ[i], "WATCHDOG_USEC=", 14) != 0 &&
            strncmp(environ[i], "WATCHDOG_PID=", 13) != 0)
            envp[k++] = environ[i];
    /* OpenMP's idle threads would otherwise spin for milliseconds after each threaded op, on
     * the cores that the next OpenBLAS GEMM needs; libgomp reads this only when it loads. */
    if (!getenv("OMP_WAIT_POLICY"))
        envp[k++] = "OMP_WAIT_POLICY=PASSIVE";

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("cannot fork %s.%u: %s", st->name, s->replica, strerror(errno));
        s->next_start_ms = sup_now_ms() + 1000;
        free(envp);
        return;
    }
    if (pid == 0) {
        /* The child dies with the supervisor; checking the parent after prctl closes the race
         * where the supervisor died before it took effect. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        /* Its own process group: a Ctrl-C at the terminal reaches the supervisor alone, which
         * then drains the stages in order instead of having them all stop at once. */
        setpgid(0, 0);
        /* Only async-signal-safe calls from here: the parent has threads (ZeroMQ's). */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        execve(prog, argv, envp);
        int e = errno;
        static const char msg[] = "diffusiond: a stage program cannot be executed\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        /* A missing or unusable program is a config problem (do not respawn); anything else
         * (out of memory, a binary being replaced) may pass. */
        _exit(e == ENOENT || e == EACCES || e == ENOEXEC || e == ENOTDIR ? 2 : 1);
    }
    free(envp);
    s->pid = pid;
    s->gen = g;
    s->run = SLOT_RUNNING;
    s->hello = s->ready = false;
    s->identity_len = 0;
    s->started_ms = sup_now_ms();
    s->ready_ms = 0;
    s->last_kill_ms = 0;
    s->last_heartbeat_ms = s->started_ms;
    memset(&s->stats, 0, sizeof s->stats);
    sup->roster_dirty = true;
    log_debug("started %s.%u (pid %d, generation %u)", st->name, s->replica, (int)pid, g);
}

/* Decides when (and whether) a slot whose process ended starts again. */
static void sup_schedule_restart(supervisor_t *sup, slot_t *s, int status)
{
    const config_server_t *cs = &sup->cfg.server;
    const char *name = sup_stage_name(sup, s);
    int64_t now = sup_now_ms();
    if (sup->phase >= PHASE_DRAINING) {
        s->run = SLOT_STOPPED;
        return;
    }
    if (s->restart_now) {
        s->restart_now = false;
        s->run = SLOT_IDLE;
        s->next_start_ms = now;
        return;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
        log_error("%s.%u exited with a bad config: not restarting it; fix the config and "
                  "reload (SIGHUP)", name, s->replica);
        s->run = SLOT_FAILED;
        return;
    }
    /* The restart budget: at most restart_budget restarts within restart_window_ms. */
    int kept = 0;
    for (int i = 0; i < s->n_restart_times; i++)
        if (now - s->restart_times[i] < cs->restart_window_ms)
            s->restart_times[kept++] = s->restart_times[i];
    s->n_restart_times = kept;
    if (kept >= cs->restart_budget) {
        log_error("%s.%u died %d times within %d ms: not restarting it until a reload", name,
                  s->replica, kept, cs->restart_window_ms);
        s->run = SLOT_FAILED;
        return;
    }
    s->restart_times[s->n_restart_times++] = now;

    /* Backoff doubles on each death and starts over once a process has lived longer than the
     * largest backoff. A process that died before its first job likely dies the same way
     * again (a missing file, a GPU that is gone): it waits throttle_ms. */
    if (s->ready_ms && now - s->ready_ms > cs->restart_backoff_max_ms)
        s->backoff_ms = 0;
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : cs->restart_backoff_ms;
    if (s->backoff_ms > cs->restart_backoff_max_ms)
        s->backoff_ms = cs->restart_backoff_max_ms;
    int delay = s->backoff_ms;
    bool before_first_job = s->stats.jobs_done == 0 && s->stats.jobs_failed == 0;
    if (before_first_job && delay < cs->throttle_ms)
        delay = cs->throttle_ms;
    s->run = SLOT_IDLE;
    s->next_start_ms = now + delay;
    log_warn("restarting %s.%u in %d ms%s", name, s->replica, delay,
             before_first_job ? " (throttled: it died before its first job)" : "");
}

static void sup_reap(supervisor_t *sup)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        slot_t *s = NULL;
        for (uint32_t i = 0; i < sup->n_slots; i++)
            if (sup->slots[i].run == SLOT_RUNNING && sup->slots[i].pid == pid)
                s = &sup->slots[i];
        if (!s)
            continue;
        const char *name = sup_stage_name(sup, s);
        bool expected = sup->phase == PHASE_STOPPING || s->restart_now;
        if (WIFEXITED(status))
            log_msg(expected && WEXITSTATUS(status) == 0 ? LOG_LEVEL_INFO : LOG_LEVEL_WARN,
                    "%s.%u (pid %d) exited with %d", name, s->replica, (int)pid,
                    WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
            log_msg(expected ? LOG_LEVEL_INFO : LOG_LEVEL_WARN, "%s.%u (pid %d) killed by signal %d",
                    name, s->replica, (int)pid, WTERMSIG(status));
        s->pid = 0;
        s->hello = s->ready = false;
        s->retiring = false;
        s->retiring = false;
        s->run = SLOT_IDLE;
        s->restarts += sup->phase < PHASE_DRAINING && !s->restart_now;
        /* Its pool's name goes now; consumers that still map it keep the memory until they
         * drop it, and owners reclaim the blocks it held when the roster says it is down. */
        pool_unlink(sup->cfg.server.instance, s->index, s->gen);
        sup->roster_dirty = true;
        sup_schedule_restart(sup, s, status);
    }
}

static void sup_kill(slot_t *s, int sig)
{
    if (s->run == SLOT_RUNNING && s->pid > 0)
        kill(s->pid, sig);
}

/* Before a stage that would not stop is killed: where it waits, from the kernel's view of each
 * of its threads (the wait channel, and the system call with its arguments), so that the log
 * tells a hang in a futex from one in epoll or in a sleep. Best effort: nothing if /proc says
 * nothing. */
static void sup_log_where_stuck(supervisor_t *sup, const slot_t *s)
{
    if (s->run != SLOT_RUNNING || s->pid <= 0)
        return;
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)s->pid);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[384], wchan[64] = "", call[160] = "";
        snprintf(path, sizeof path, "%s/%s/wchan", dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            if (!fgets(wchan, sizeof wchan, f))
                wchan[0] = '\0';
            fclose(f);
        }
        snprintf(path, sizeof path, "%s/%s/syscall", dir, e->d_name);
        f = fopen(path, "r");
        if (f) {
            if (!fgets(call, sizeof call, f))
                call[0] = '\0';
            fclose(f);
        }
        call[strcspn(call, "\n")] = '\0';
        log_warn("%s.%u (pid %d) thread %s waits in %s (syscall %s)", sup_stage_name(sup, s),
                 s->replica, (int)s->pid, e->d_name, wchan[0] ? wchan : "?",
                 call[0] ? call : "?");
    }
    closedir(d);
}

/* ---- health, status, systemd ----------------------------------------------------------------- */

static void sup_check_health(supervisor_t *sup, int64_t now)
{
    const config_server_t *cs = &sup->cfg.server;
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        slot_t *s = &sup->slots[i];
        if (s->run != SLOT_RUNNING || sup->phase == PHASE_STOPPING)
            continue;
        if (s->retiring && now >= s->retire_deadline_ms) {
            log_warn("%s.%u still busy %d ms after it was asked to retire: stopping it",
                     sup_stage_name(sup, s), s->replica, cs->drain_timeout_ms);
            sup_kill(s, SIGTERM); /* it hands back what it holds as failures */
            s->retire_deadline_ms = now + cs->stop_timeout_ms;
        }
        /* A kill that has not taken yet (the reap is pending, or the process is stuck in the
         * kernel) is repeated once per timeout, not on every turn. The heartbeat time stays
         * as it was, so the watchdog keeps seeing a silent stage as silent. */
        bool may_kill = !s->last_kill_ms || now - s->last_kill_ms > cs->heartbeat_timeout_ms;
        if (s->ready && now - s->last_heartbeat_ms > cs->heartbeat_timeout_ms && may_kill) {
            log_error("%s.%u (pid %d) sent no heartbeat for %lld ms: killing it",
                      sup_stage_name(sup, s), s->replica, (int)s->pid,
                      (long long)(now - s->last_heartbeat_ms));
            sup_kill(s, SIGKILL);
            s->last_kill_ms = now;
        } else if (!s->ready && now - s->started_ms > cs->ready_timeout_ms && may_kill) {
            log_error("%s.%u (pid %d) not ready after %d ms: killing it", sup_stage_name(sup, s),
                      s->replica, (int)s->pid, cs->ready_timeout_ms);
            sup_kill(s, SIGKILL);
            s->last_kill_ms = now;
        }
    }
}

static bool sup_all_ready(const supervisor_t *sup, uint32_t *n_ready)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < sup->n_slots; i++)
        n += sup->slots[i].run == SLOT_RUNNING && sup->slots[i].ready;
    *n_ready = n;
    return n == sup->n_slots;
}

/* Every ready stage has heartbeated within three beats: the condition for WATCHDOG=1. It is
 * stricter than the heartbeat timeout on purpose, so that systemd's watchdog also sees a stage
 * go quiet, not only a stuck supervisor loop. */
static bool sup_stages_alive(const supervisor_t *sup, int64_t now)
{
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        const slot_t *s = &sup->slots[i];
        if (s->run == SLOT_RUNNING && s->ready &&
            now - s->last_heartbeat_ms > 3 * (int64_t)sup->cfg.server.heartbeat_ms)
            return false;
    }
    return true;
}

static void sup_status_line(const supervisor_t *sup, char *buf, size_t len)
{
    uint32_t n_ready;
    bool all = sup_all_ready(sup, &n_ready);
    uint64_t done = 0, inflight = 0;
    uint32_t failed = 0;
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        done += sup->slots[i].stats.jobs_done;
        inflight += sup->slots[i].stats.inflight;
        failed += sup->slots[i].run == SLOT_FAILED;
    }
    static const char *const phase_names[] = {"starting", "running", "draining", "stopping"};
    const char *phase = sup->phase == PHASE_RUNNING && !all ? "degraded" : phase_names[sup->phase];
    int n = snprintf(buf, len, "%s: %u/%u stage replicas ready, %llu jobs in flight, %llu done",
                     phase, n_ready, sup->n_slots, (unsigned long long)inflight,
                     (unsigned long long)done);
    if (failed && n > 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, ", %u failed", failed);
}

/* <runtime_dir>/status.json: what an operator (and the process tests) can read of each slot. */
static void sup_write_status(supervisor_t *sup)
{
    char tmp[CONFIG_PATH_MAX + 32], path[CONFIG_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/status.json.tmp", sup->runtime_dir);
    snprintf(path, sizeof path, "%s/status.json", sup->runtime_dir);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    static const char *const run_names[] = {"idle", "running", "failed", "stopped"};
    char line[256];
    sup_status_line(sup, line, sizeof line);
    fprintf(f, "{\"pid\": %d, \"status\": \"%s\", \"slots\": [\n", (int)getpid(), line);
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        const slot_t *s = &sup->slots[i];
        fprintf(f,
                "  {\"slot\": %u, \"stage\": \"%s\", \"replica\": %u, \"run\": \"%s\", "
                "\"ready\": %s, \"pid\": %d, \"gen\": %u, \"restarts\": %u, \"jobs_done\": %llu, "
                "\"jobs_failed\": %llu, \"jobs_dropped\": %llu, \"inflight\": %u, "
                "\"busy_us\": %llu, \"pool_used\": %llu, \"pool_capacity\": %llu}%s\n",
                s->index, sup_stage_name(sup, s), s->replica, run_names[s->run],
                s->ready ? "true" : "false", (int)s->pid, s->gen, s->restarts,
                (unsigned long long)s->stats.jobs_done, (unsigned long long)s->stats.jobs_failed,
                (unsigned long long)s->stats.jobs_dropped, s->stats.inflight,
                (unsigned long long)s->stats.busy_us, (unsigned long long)s->stats.pool_used,
                (unsigned long long)s->stats.pool_capacity, i + 1 < sup->n_slots ? "," : "");
    }
    fprintf(f, "]}\n");
    if (fclose(f) == 0)
        rename(tmp, path);
}

static void sup_update_systemd(supervisor_t *sup, int64_t now)
{
    uint32_t n_ready;
    char line[256];
    if (sup->phase == PHASE_STARTING && sup_all_ready(sup, &n_ready)) {
        sup->phase = PHASE_RUNNING;
        sup_status_line(sup, line, sizeof line);
        log_info("ready: %u stage replicas", sup->n_slots);
        notify_ready(line);
        sup->notified_ready = true;
    }
    if (now >= sup->next_status_ms) {
        sup_status_line(sup, line, sizeof line);
        notify_status(line);
        sup_write_status(sup);
        sup->next_status_ms = now + 1000;
    }
    /* Silence lets systemd restart us when stages stop heartbeating and we could not mend it
     * ourselves; a ping goes as soon as they heartbeat again. */
    if (sup->watchdog_usec && now >= sup->next_watchdog_ms && sup_stages_alive(sup, now)) {
        notify_watchdog();
        sup->next_watchdog_ms = now + (int64_t)(sup->watchdog_usec / 2000);
    }
}

/* ---- reload -------------------------------------------------------------------------------- */

static bool sup_same_topology(const config_t *a, const config_t *b)
{
    if (a->n_stages != b->n_stages || strcmp(a->server.instance, b->server.instance) != 0 ||
        strcmp(a->server.runtime_dir, b->server.runtime_dir) != 0)
        return false;
    for (int i = 0; i < a->n_stages; i++)
        if (strcmp(a->stages[i].name, b->stages[i].name) != 0 ||
            a->stages[i].replicas != b->stages[i].replicas)
            return false;
    return true;
}

static bool sup_stage_changed(const config_stage_t *a, const config_stage_t *b)
{
    config_stage_t x = *a, y = *b;
    x.line = y.line = 0; /* moving a section in the file changes nothing */
    return memcmp(&x, &y, sizeof x) != 0;
}

static void sup_reload(supervisor_t *sup)
{
    notify_reloading();
    config_t *next = malloc(sizeof *next);
    char *text = NULL, err[CONFIG_ERROR_MAX];
    if (!next) {
        log_error("reload: out of memory; keeping the running config");
        goto done;
    }
    if (supervisor_load_config(sup->config_path, sup->exe_dir, next, &text, err, sizeof err) != 0) {
        log_error("reload: %s; keeping the running config", err);
        goto done;
    }
    if (!sup_same_topology(&sup->cfg, next)) {
        log_error("reload: changing stages, replicas, instance or runtime_dir needs a restart; "
                  "keeping the running config");
        free(text);
        goto done;
    }
    /* Stages read [server] (heartbeats, log level) and [model] too: a change there restarts
     * every stage, so that no stage runs with settings the supervisor no longer has. */
    bool all_changed = memcmp(&sup->cfg.model, &next->model, sizeof next->model) != 0 ||
                       memcmp(&sup->cfg.server, &next->server, sizeof next->server) != 0;
    bool changed[CONFIG_MAX_STAGES];
    for (int i = 0; i < next->n_stages; i++)
        changed[i] = all_changed || sup_stage_changed(&sup->cfg.stages[i], &next->stages[i]);
    char *old_text = sup->config_text;
    sup->config_text = text;
    if (sup_write_snapshot(sup) != 0) {
        sup->config_text = old_text;
        free(text);
        log_error("reload: cannot write the config for the stages; keeping the running config");
        goto done;
    }
    free(old_text);
    sup->cfg = *next;
    log_set_level((log_level_t)sup->cfg.server.log_level);
    int restarted = 0;
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        slot_t *s = &sup->slots[i];
        if (s->run == SLOT_FAILED) { /* the operator may have fixed what made it fail */
            s->run = SLOT_IDLE;
            s->next_start_ms = 0;
            s->n_restart_times = 0;
            s->backoff_ms = 0;
            restarted++;
        } else if (changed[s->stage] && s->run == SLOT_RUNNING && !s->retiring) {
            /* RETIRING in the roster: senders stop sending it work, it finishes what it has
             * and exits, and we start its successor at once. */
            s->restart_now = true;
            s->retiring = true;
            s->retire_deadline_ms = sup_now_ms() + sup->cfg.server.drain_timeout_ms;
            sup->roster_dirty = true;
            restarted++;
        }
    }
    log_info("reloaded %s; restarting %d stage replica%s", sup->config_path, restarted,
             restarted == 1 ? "" : "s");
done:
    free(next);
    char line[256];
    sup_status_line(sup, line, sizeof line);
    /* READY=1 ends the reload for systemd, whether it took or not; but never before every
     * stage has been ready once. */
    if (sup->notified_ready)
        notify_ready(line);
    else
        notify_status(line);
}

/* ---- the loop ---------------------------------------------------------------------------------- */

static void sup_begin_drain(supervisor_t *sup, int64_t now)
{
    log_info("stopping: draining jobs for up to %d ms", sup->cfg.server.drain_timeout_ms);
    notify_stopping();
    sup->phase = PHASE_DRAINING;
    sup->phase_deadline_ms = now + sup->cfg.server.drain_timeout_ms;
    sup_broadcast(sup, PROTO_MSG_DRAIN);
    sup->roster_dirty = true;
}

/* Drained when every running stage has reported, in a heartbeat sent after it got the
 * DRAIN (the heartbeat says so), that it holds no job. */
static bool sup_drained(const supervisor_t *sup)
{
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        const slot_t *s = &sup->slots[i];
        if (s->run != SLOT_RUNNING || !s->ready)
            continue;
        if (!s->stats.draining || s->stats.inflight > 0)
            return false;
    }
    return true;
}

static void sup_begin_stop(supervisor_t *sup, int64_t now, bool drained)
{
    if (!drained)
        log_warn("drain timed out after %d ms: stopping with jobs in flight",
                 sup->cfg.server.drain_timeout_ms);
    sup->phase = PHASE_STOPPING;
    sup->phase_deadline_ms = now + sup->cfg.server.stop_timeout_ms;
    sup_broadcast(sup, PROTO_MSG_SHUTDOWN);
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        if (sup->slots[i].run == SLOT_IDLE)
            sup->slots[i].run = SLOT_STOPPED;
        sup_kill(&sup->slots[i], SIGTERM);
    }
}

static bool sup_any_running(const supervisor_t *sup)
{
    for (uint32_t i = 0; i < sup->n_slots; i++)
        if (sup->slots[i].run == SLOT_RUNNING)
            return true;
    return false;
}

static int sup_open(supervisor_t *sup)
{
    char ep[CONFIG_PATH_MAX + 32];
    int zero = 0, hwm = 100000;
    sup->zctx = zmq_ctx_new();
    sup->control = sup->zctx ? zmq_socket(sup->zctx, ZMQ_ROUTER) : NULL;
    if (!sup->control)
        return -1;
    zmq_setsockopt(sup->control, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sup->control, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sup->control, ZMQ_RCVHWM, &hwm, sizeof hwm);
    snprintf(ep, sizeof ep, "ipc://%s/control", sup->runtime_dir);
    if (zmq_bind(sup->control, ep) != 0) {
        log_error("cannot bind %s: %s", ep, zmq_strerror(errno));
        return -1;
    }
    chmod(ep + strlen("ipc://"), 0600);
    if (pipe2(sup_wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    struct sigaction sa = {.sa_handler = sup_on_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

supervisor_t *supervisor_new(const char *config_path, const char *exe_dir, const config_t *cfg,
                             char *config_text, const char *runtime_dir)
{
    supervisor_t *sup = calloc(1, sizeof *sup);
    if (!sup)
        return NULL;
    sup->lock_fd = -1;
    sup->dir_lock_fd = -1;
    sup->cfg = *cfg;
    sup->config_text = config_text;
    snprintf(sup->config_path, sizeof sup->config_path, "%s", config_path);
    snprintf(sup->exe_dir, sizeof sup->exe_dir, "%s", exe_dir);
    snprintf(sup->runtime_dir, sizeof sup->runtime_dir, "%s", runtime_dir);
    for (int i = 0; i < cfg->n_stages; i++)
        for (int r = 0; r < cfg->stages[i].replicas && sup->n_slots < PROTO_MAX_SLOTS; r++) {
            slot_t *s = &sup->slots[sup->n_slots];
            s->stage = i;
            s->replica = (uint32_t)r;
            s->index = sup->n_slots++;
            s->run = SLOT_IDLE;
        }
    return sup;
}

/* One supervisor per instance name on a machine: a second would remove the first one's
 * segments and take its sockets. The lock is an abstract unix socket named after the
 * instance: the kernel frees it when we die, however we die, and it leaves no file behind. */
static int sup_lock_instance(supervisor_t *sup)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int n = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "diffusiond.%s",
                     sup->cfg.server.instance);
    sup->lock_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sup->lock_fd < 0) {
        log_error("socket: %s", strerror(errno));
        return -1;
    }
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    if (bind(sup->lock_fd, (struct sockaddr *)&addr, len) != 0) {
        if (errno == EADDRINUSE)
            log_error("another diffusiond runs instance '%s' on this machine; give this one "
                      "another [server] instance", sup->cfg.server.instance);
        else
            log_error("cannot lock instance '%s': %s", sup->cfg.server.instance, strerror(errno));
        return -1;
    }
    return 0;
}

/* Sockets live in the runtime folder: two supervisors must not share one either, even with
 * different instance names. */
static int sup_lock_runtime_dir(supervisor_t *sup)
{
    char path[CONFIG_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/lock", sup->runtime_dir);
    sup->dir_lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sup->dir_lock_fd < 0) {
        log_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(sup->dir_lock_fd, LOCK_EX | LOCK_NB) != 0) {
        log_error("another diffusiond uses the runtime directory %s; give this one another "
                  "[server] runtime_dir", sup->runtime_dir);
        return -1;
    }
    return 0;
}

int supervisor_run(supervisor_t *sup)
{
    if (sup_lock_instance(sup) != 0 || sup_lock_runtime_dir(sup) != 0)
        return 1;
    /* A crash of an earlier run may have left segments of this instance behind. */
    int stale = pool_unlink_all(sup->cfg.server.instance);
    if (stale > 0)
        log_warn("removed %d shared-memory segment%s left by an earlier run", stale,
                 stale == 1 ? "" : "s");
    if (sup_open(sup) != 0 || sup_write_snapshot(sup) != 0)
        return 1;
    sup->watchdog_usec = notify_watchdog_usec();
    sup->phase = PHASE_STARTING;
    notify_status("starting stages");
    log_info("starting %u stage replicas (runtime directory %s)", sup->n_slots, sup->runtime_dir);

    for (;;) {
        int64_t now = sup_now_ms();
        if (sup_got_chld) {
            sup_got_chld = 0;
            sup_reap(sup);
        }
        if (sup_got_term && sup->phase < PHASE_DRAINING) {
            sup_got_term = 0;
            sup_begin_drain(sup, now);
        } else if (sup_got_term && sup->phase == PHASE_DRAINING) {
            sup_got_term = 0;
            log_warn("second stop signal: stopping without waiting for the drain");
            sup_begin_stop(sup, now, true);
        }
        if (sup_got_hup) {
            sup_got_hup = 0;
            if (sup->phase < PHASE_DRAINING)
                sup_reload(sup);
        }
        if (sup->phase < PHASE_DRAINING)
            for (uint32_t i = 0; i < sup->n_slots; i++)
                if (sup->slots[i].run == SLOT_IDLE && now >= sup->slots[i].next_start_ms)
                    sup_spawn(sup, &sup->slots[i]);
        if (sup->phase == PHASE_DRAINING && (sup_drained(sup) || now >= sup->phase_deadline_ms))
            sup_begin_stop(sup, now, sup_drained(sup));
        if (sup->phase == PHASE_STOPPING) {
            if (!sup_any_running(sup))
                break;
            if (now >= sup->phase_deadline_ms) {
                log_warn("stages still running %d ms after SHUTDOWN: killing them",
                         sup->cfg.server.stop_timeout_ms);
                for (uint32_t i = 0; i < sup->n_slots; i++) {
                    sup_log_where_stuck(sup, &sup->slots[i]);
                    sup_kill(&sup->slots[i], SIGKILL);
                }
                sup->phase_deadline_ms = now + 60000;
            }
        }
        sup_check_health(sup, now);
        if (sup->roster_dirty) {
            sup_broadcast_roster(sup);
            sup->next_status_ms = 0; /* and show the change in status.json now */
        }
        sup_update_systemd(sup, now);

        zmq_pollitem_t items[2] = {
            {.socket = sup->control, .events = ZMQ_POLLIN},
            {.fd = sup_wake_pipe[0], .events = ZMQ_POLLIN},
        };
        if (zmq_poll(items, 2, 50) < 0 && errno != EINTR) {
            log_error("poll: %s", zmq_strerror(errno));
            sup->exit_code = 1;
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            char buf[64];
            while (read(sup_wake_pipe[0], buf, sizeof buf) > 0)
                ;
        }
        sup_read_control(sup);
    }

    /* Stages remove their own segments when they exit cleanly; this catches the rest. */
    pool_unlink_all(sup->cfg.server.instance);
    char ep[CONFIG_PATH_MAX + 32];
    snprintf(ep, sizeof ep, "%s/control", sup->runtime_dir);
    unlink(ep);
    for (uint32_t i = 0; i < sup->n_slots; i++) {
        snprintf(ep, sizeof ep, "%s/%s.%u", sup->runtime_dir, sup_stage_name(sup, &sup->slots[i]),
                 sup->slots[i].replica);
        unlink(ep);
        strncat(ep, ".results", sizeof ep - strlen(ep) - 1);
        unlink(ep);
    }
    for (unsigned n = 1; n <= sup->n_snapshots; n++) {
        snprintf(ep, sizeof ep, "%s/config.%u.conf", sup->runtime_dir, n);
        unlink(ep);
    }
    snprintf(ep, sizeof ep, "%s/status.json", sup->runtime_dir);
    unlink(ep);
    log_info("stopped");
    return sup->exit_code;
}

void supervisor_free(supervisor_t **psup)
{
    supervisor_t *sup = *psup;
    if (!sup)
        return;
    if (sup->control)
        zmq_close(sup->control);
    if (sup->zctx)
        zmq_ctx_term(sup->zctx);
    if (sup->lock_fd >= 0)
        close(sup->lock_fd);
    if (sup->dir_lock_fd >= 0)
        close(sup->dir_lock_fd);
    free(sup->config_text);
    free(sup);
    *psup = NULL;
}
