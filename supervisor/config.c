/* config: reads diffusiond.conf (see config.h) through one table of directives.
 * The table drives both parsing and defaults, so a default is parsed by the same code as the
 * value a user writes, and the documented default cannot drift from the one in the code. */
#include "config.h"

#include "ipc/log.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A config is a few kilobytes; anything much larger is the wrong file (or /dev/zero). */
#define CONFIG_FILE_MAX (1024 * 1024)

#define CONFIG_SIZE_K (UINT64_C(1) << 10)
#define CONFIG_SIZE_M (UINT64_C(1) << 20)
#define CONFIG_SIZE_G (UINT64_C(1) << 30)

typedef enum {
    CONFIG_SECTION_NONE,
    CONFIG_SECTION_SERVER,
    CONFIG_SECTION_MODEL,
    CONFIG_SECTION_STAGE,
} config_section_t;

typedef enum {
    CONFIG_TYPE_INT,       /* int, min..max */
    CONFIG_TYPE_DURATION,  /* int milliseconds, min..max */
    CONFIG_TYPE_SIZE,      /* uint64_t bytes, K/M/G suffixes, min..max */
    CONFIG_TYPE_BOOL,      /* bool */
    CONFIG_TYPE_STRING,    /* char[size], then the row's check */
    CONFIG_TYPE_LOG_LEVEL, /* int holding a log_level_t */
    CONFIG_TYPE_DEVICE,    /* config_device_t */
    CONFIG_TYPE_DTYPE,     /* char[size]: f32, bf16 or f16 */
} config_type_t;

/* The value may continue on indented lines (joined with one space). */
#define CONFIG_FLAG_MULTILINE 1u

/* A check returns NULL, or what is allowed (the value already fits its field). */
typedef const char *(*config_check_fn)(const char *value);

typedef struct {
    config_section_t section;
    const char *key;
    config_type_t type;
    size_t offset; /* into config_server_t, config_model_t or config_stage_t */
    size_t size;   /* of the field, for strings and for the table's self-check */
    const char *def;
    long long min, max;
    config_check_fn check;
    unsigned flags;
} config_directive_t;

static const char *config_check_listen(const char *value);
static const char *config_check_instance(const char *value);

/* Keys are the field names, so a key and its field cannot be mismatched. */
#define CONFIG_ROW(sec, stype, field, type, def, lo, hi, check, flags)                      \
    {sec, #field, type, offsetof(stype, field), sizeof(((stype *)0)->field), def, lo, hi, check, \
     flags}
#define SERVER(field, type, def, lo, hi, check) \
    CONFIG_ROW(CONFIG_SECTION_SERVER, config_server_t, field, type, def, lo, hi, check, 0)
#define MODEL(field, type, def, lo, hi) \
    CONFIG_ROW(CONFIG_SECTION_MODEL, config_model_t, field, type, def, lo, hi, NULL, 0)
#define STAGE(field, type, def, lo, hi, flags) \
    CONFIG_ROW(CONFIG_SECTION_STAGE, config_stage_t, field, type, def, lo, hi, NULL, flags)

/* Every default here is documented, with the same text, in conf/diffusiond.conf and in the
 * comments of config.h; tests/unit/test_config.c checks the conf file against this table. */
static const config_directive_t config_directives[] = {
    SERVER(listen,                 CONFIG_TYPE_STRING,    "127.0.0.1:8000", 0, 0, config_check_listen),
    SERVER(instance,               CONFIG_TYPE_STRING,    "diffusiond", 0, 0, config_check_instance),
    SERVER(runtime_dir,            CONFIG_TYPE_STRING,    "", 0, 0, NULL),
    SERVER(log_level,              CONFIG_TYPE_LOG_LEVEL, "info", 0, 0, NULL),
    SERVER(heartbeat_ms,           CONFIG_TYPE_DURATION,  "1000", 10, 60000, NULL),
    SERVER(heartbeat_timeout_ms,   CONFIG_TYPE_DURATION,  "10000", 20, 600000, NULL),
    SERVER(ready_timeout_ms,       CONFIG_TYPE_DURATION,  "120000", 100, 3600000, NULL),
    SERVER(drain_timeout_ms,       CONFIG_TYPE_DURATION,  "30000", 0, 3600000, NULL),
    SERVER(stop_timeout_ms,        CONFIG_TYPE_DURATION,  "5000", 0, 600000, NULL),
    SERVER(restart_backoff_ms,     CONFIG_TYPE_DURATION,  "100", 1, 600000, NULL),
    SERVER(restart_backoff_max_ms, CONFIG_TYPE_DURATION,  "30000", 1, 3600000, NULL),
    SERVER(restart_budget,         CONFIG_TYPE_INT,       "10", 0, 100, NULL),
    SERVER(restart_window_ms,      CONFIG_TYPE_DURATION,  "300000", 1000, 86400000, NULL),
    SERVER(throttle_ms,            CONFIG_TYPE_DURATION,  "10000", 0, 3600000, NULL),
    SERVER(http_body_max,          CONFIG_TYPE_SIZE,      "1M", 1024, 64LL << 20, NULL),
    SERVER(http_prompt_max,        CONFIG_TYPE_INT,       "8192", 1, 24000, NULL),
    SERVER(http_pixels_max,        CONFIG_TYPE_INT,       "4194304", 256, 268435456, NULL),
    SERVER(http_steps_max,         CONFIG_TYPE_INT,       "100", 1, 1000, NULL),
    SERVER(http_n_max,             CONFIG_TYPE_INT,       "10", 1, 10, NULL),
    SERVER(http_queue_max,         CONFIG_TYPE_INT,       "64", 1, 100000, NULL),
    SERVER(http_timeout_ms,        CONFIG_TYPE_DURATION,  "600000", 100, 86400000, NULL),
    SERVER(http_io_timeout_ms,     CONFIG_TYPE_DURATION,  "30000", 100, 3600000, NULL),
    SERVER(http_api_keys,          CONFIG_TYPE_STRING,    "", 0, 0, NULL),
    SERVER(http_api_key_file,      CONFIG_TYPE_STRING,    "", 0, 0, NULL),
    SERVER(http_model,             CONFIG_TYPE_STRING,    "", 0, 0, NULL),

    MODEL(path,                    CONFIG_TYPE_STRING,    "", 0, 0),
    MODEL(dtype,                   CONFIG_TYPE_DTYPE,     "f32", 0, 0),

    STAGE(program,                 CONFIG_TYPE_STRING,    "", 0, 0, 0),
    STAGE(args,                    CONFIG_TYPE_STRING,    "", 0, 0, CONFIG_FLAG_MULTILINE),
    STAGE(replicas,                CONFIG_TYPE_INT,       "1", 1, CONFIG_MAX_REPLICAS, 0),
    STAGE(device,                  CONFIG_TYPE_DEVICE,    "cpu", 0, 0, 0),
    STAGE(threads,                 CONFIG_TYPE_INT,       "0", 0, 1024, 0),
    STAGE(pool_size,               CONFIG_TYPE_SIZE,      "64M", 0, 256LL << 30, 0),
    STAGE(batch_size,              CONFIG_TYPE_INT,       "1", 1, 64, 0),
    STAGE(batch_wait_ms,           CONFIG_TYPE_DURATION,  "0", 0, 60000, 0),
    STAGE(queue_depth,             CONFIG_TYPE_INT,       "16", 1, 100000, 0),
};

#define CONFIG_N_DIRECTIVES (sizeof config_directives / sizeof config_directives[0])
/* config_parser_t.seen is a bit per row. */
_Static_assert(CONFIG_N_DIRECTIVES <= 64, "config_parser_t.seen holds 64 rows");

/* One parse. The line reader sees every line before libinih does, so it knows the line
 * number (this libinih's handler gets none) and every section header (the handler is not
 * called for them, so an empty [stage.x] would otherwise go unseen). */
typedef struct {
    config_t *cfg;
    const char *name; /* file name for messages */
    char *err;
    size_t errlen;
    int failed;

    const char *pos; /* next unread byte of the text */
    int lineno;      /* of the line last handed to libinih */
    int continuation; /* that line continues the previous key's value */
    int prev_key;     /* libinih would treat an indented next line as a continuation */

    config_section_t section;
    char section_name[64]; /* as written, for matching libinih's and for messages */
    config_stage_t *stage; /* for CONFIG_SECTION_STAGE */
    int server_line, model_line;
    uint64_t seen;                       /* rows set in the current section */
    int row_line[CONFIG_N_DIRECTIVES];   /* line each row was last set on */
} config_parser_t;

/* ---- messages ---- */

static void config_set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void config_set_error(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Records the first error only: later ones are usually consequences of it. */
static void config_fail(config_parser_t *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void config_fail(config_parser_t *p, int line, const char *fmt, ...)
{
    if (p->failed)
        return;
    p->failed = 1;
    if (p->err == NULL || p->errlen == 0)
        return;
    int n = line > 0 ? snprintf(p->err, p->errlen, "%s:%d: ", p->name, line)
                     : snprintf(p->err, p->errlen, "%s: ", p->name);
    if (n < 0 || (size_t)n >= p->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Values are quoted in messages; a long one is cut so that the message keeps its tail. */
#define CONFIG_QUOTE_MAX 64

static const char *config_section_label(config_section_t section)
{
    switch (section) {
    case CONFIG_SECTION_SERVER: return "server";
    case CONFIG_SECTION_MODEL: return "model";
    case CONFIG_SECTION_STAGE: return "stage.NAME";
    case CONFIG_SECTION_NONE: break;
    }
    return "";
}

/* "64M" rather than "67108864" in "allowed" texts. */
static void config_format_size(uint64_t v, char *buf, size_t len)
{
    if (v != 0 && v % CONFIG_SIZE_G == 0)
        snprintf(buf, len, "%lluG", (unsigned long long)(v / CONFIG_SIZE_G));
    else if (v != 0 && v % CONFIG_SIZE_M == 0)
        snprintf(buf, len, "%lluM", (unsigned long long)(v / CONFIG_SIZE_M));
    else if (v != 0 && v % CONFIG_SIZE_K == 0)
        snprintf(buf, len, "%lluK", (unsigned long long)(v / CONFIG_SIZE_K));
    else
        snprintf(buf, len, "%llu", (unsigned long long)v);
}

/* ---- value parsers ---- */

/* A whole decimal number, optionally signed; nothing else on the value. */
static int config_parse_int(const char *text, long long *out)
{
    if (text[0] == '\0' || isspace((unsigned char)text[0]))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

int config_parse_size(const char *text, uint64_t *out)
{
    if (text == NULL || out == NULL || !isdigit((unsigned char)text[0]))
        return -1; /* also rejects "-1", which strtoull would wrap around */
    uint64_t v = 0;
    const char *s = text;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    unsigned shift = 0;
    switch (*s) {
    case 'k': case 'K': shift = 10; s++; break;
    case 'm': case 'M': shift = 20; s++; break;
    case 'g': case 'G': shift = 30; s++; break;
    default: break;
    }
    if (*s != '\0')
        return -1;
    if (v > (UINT64_MAX >> shift))
        return -1;
    *out = v << shift;
    return 0;
}

int config_parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    if (text == NULL || out == NULL)
        return -1;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

int config_parse_device(const char *text, config_device_t *out)
{
    if (text == NULL || out == NULL)
        return -1;
    if (strcmp(text, "cpu") == 0) {
        out->cuda = false;
        out->index = 0;
        return 0;
    }
    if (strncmp(text, "cuda:", 5) != 0)
        return -1;
    const char *s = text + 5;
    /* One or two digits: no sign, no spaces, and no "cuda:0000000001". */
    if (!isdigit((unsigned char)s[0]))
        return -1;
    int v = s[0] - '0';
    if (isdigit((unsigned char)s[1]))
        v = v * 10 + (s[1] - '0');
    else if (s[1] != '\0')
        return -1;
    if (s[1] != '\0' && s[2] != '\0')
        return -1;
    if (v > CONFIG_MAX_CUDA_INDEX)
        return -1;
    out->cuda = true;
    out->index = v;
    return 0;
}

/* HOST:PORT; the last ':' splits, so "[::1]:8000" works. The host is not resolved here. */
static const char *config_check_listen(const char *value)
{
    static const char *const allowed =
        "allowed: HOST:PORT with a port 1..65535, as in 127.0.0.1:8000 or [::1]:8000";
    const char *colon = strrchr(value, ':');
    if (colon == NULL || colon == value)
        return allowed;
    long long port;
    if (!isdigit((unsigned char)colon[1]) || config_parse_int(colon + 1, &port) != 0 ||
        port < 1 || port > 65535)
        return allowed;
    return NULL;
}

/* The instance names shared-memory segments and sockets: keep it to a portable alphabet. */
static const char *config_check_instance(const char *value)
{
    static const char *const allowed = "allowed: 1 to 31 of a-z, 0-9, '_' and '-'";
    if (value[0] == '\0')
        return allowed;
    for (const char *s = value; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_' || *s == '-'))
            return allowed;
    return NULL;
}

static int config_valid_stage_name(const char *name, size_t len)
{
    if (len == 0 || len >= CONFIG_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return 1;
}

/* Parses text into the row's field of base. Returns 0, or -1 with what is wrong and what is
 * allowed in why. */
static int config_apply_directive(const config_directive_t *d, void *base, const char *text,
                                  char *why, size_t whylen)
{
    char *field = (char *)base + d->offset;
    int q = CONFIG_QUOTE_MAX;
    switch (d->type) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_DURATION: {
        const char *unit = d->type == CONFIG_TYPE_DURATION ? " milliseconds" : "";
        long long v;
        if (config_parse_int(text, &v) != 0) {
            snprintf(why, whylen, "'%.*s' is not a whole number; allowed: %lld..%lld%s", q, text,
                     d->min, d->max, unit);
            return -1;
        }
        if (v < d->min || v > d->max) {
            snprintf(why, whylen, "%lld is out of range; allowed: %lld..%lld%s", v, d->min,
                     d->max, unit);
            return -1;
        }
        *(int *)(void *)field = (int)v;
        return 0;
    }
    case CONFIG_TYPE_SIZE: {
        char lo[32], hi[32];
        config_format_size((uint64_t)d->min, lo, sizeof lo);
        config_format_size((uint64_t)d->max, hi, sizeof hi);
        uint64_t v;
        if (config_parse_size(text, &v) != 0) {
            snprintf(why, whylen,
                     "'%.*s' is not a size; allowed: bytes with an optional K, M or G "
                     "(powers of 1024), %s..%s",
                     q, text, lo, hi);
            return -1;
        }
        if (v < (uint64_t)d->min || v > (uint64_t)d->max) {
            snprintf(why, whylen, "'%.*s' is out of range; allowed: %s..%s", q, text, lo, hi);
            return -1;
        }
        *(uint64_t *)(void *)field = v;
        return 0;
    }
    case CONFIG_TYPE_BOOL: {
        bool v;
        if (config_parse_bool(text, &v) != 0) {
            snprintf(why, whylen,
                     "'%.*s' is not a boolean; allowed: true/false, yes/no, on/off, 1/0", q, text);
            return -1;
        }
        *(bool *)(void *)field = v;
        return 0;
    }
    case CONFIG_TYPE_STRING: {
        size_t len = strlen(text);
        if (len >= d->size) {
            snprintf(why, whylen, "the value is %zu characters long; allowed: at most %zu", len,
                     d->size - 1);
            return -1;
        }
        if (d->check != NULL) {
            const char *allowed = d->check(text);
            if (allowed != NULL) {
                snprintf(why, whylen, "'%.*s' is not valid; %s", q, text, allowed);
                return -1;
            }
        }
        /* The whole field is cleared so that equal configs are equal bytes. */
        memset(field, 0, d->size);
        memcpy(field, text, len);
        return 0;
    }
    case CONFIG_TYPE_LOG_LEVEL: {
        int level = log_level_parse(text);
        if (level < 0) {
            snprintf(why, whylen,
                     "'%.*s' is not a log level; allowed: error, warn, info, debug", q, text);
            return -1;
        }
        *(int *)(void *)field = level;
        return 0;
    }
    case CONFIG_TYPE_DEVICE: {
        config_device_t dev;
        memset(&dev, 0, sizeof dev); /* padding too, so that equal configs are equal bytes */
        if (config_parse_device(text, &dev) != 0) {
            snprintf(why, whylen, "'%.*s' is not a device; allowed: cpu, or cuda:N with N 0..%d",
                     q, text, CONFIG_MAX_CUDA_INDEX);
            return -1;
        }
        memcpy(field, &dev, sizeof dev);
        return 0;
    }
    case CONFIG_TYPE_DTYPE: {
        if (strcmp(text, "f32") != 0 && strcmp(text, "bf16") != 0 && strcmp(text, "f16") != 0) {
            snprintf(why, whylen, "'%.*s' is not a dtype; allowed: f32, bf16, f16", q, text);
            return -1;
        }
        memset(field, 0, d->size);
        memcpy(field, text, strlen(text)); /* at most 4 bytes of a char[8] */
        return 0;
    }
    }
    snprintf(why, whylen, "internal error: directive type %d", (int)d->type);
    return -1;
}

/* ---- defaults ---- */

static size_t config_type_size(config_type_t type)
{
    switch (type) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_DURATION:
    case CONFIG_TYPE_LOG_LEVEL: return sizeof(int);
    case CONFIG_TYPE_SIZE: return sizeof(uint64_t);
    case CONFIG_TYPE_BOOL: return sizeof(bool);
    case CONFIG_TYPE_DEVICE: return sizeof(config_device_t);
    case CONFIG_TYPE_STRING:
    case CONFIG_TYPE_DTYPE: return 0; /* any char array */
    }
    return 0;
}

/* A default that does not parse, or a row whose type does not fit its field, is a bug in the
 * table above: no config could be trusted, so stop. */
static void config_apply_defaults(config_section_t section, void *base)
{
    for (size_t i = 0; i < CONFIG_N_DIRECTIVES; i++) {
        const config_directive_t *d = &config_directives[i];
        if (d->section != section)
            continue;
        size_t want = config_type_size(d->type);
        char why[CONFIG_ERROR_MAX];
        if (want != 0 && want != d->size) {
            fprintf(stderr, "config: panic: [%s] %s: field is %zu bytes, type needs %zu\n",
                    config_section_label(section), d->key, d->size, want);
            abort();
        }
        if (config_apply_directive(d, base, d->def, why, sizeof why) != 0) {
            fprintf(stderr, "config: panic: [%s] %s: default: %s\n",
                    config_section_label(section), d->key, why);
            abort();
        }
    }
}

void config_defaults(config_t *cfg)
{
    /* Zeroed first: padding and string tails then compare equal between two configs. */
    memset(cfg, 0, sizeof *cfg);
    config_apply_defaults(CONFIG_SECTION_SERVER, &cfg->server);
    config_apply_defaults(CONFIG_SECTION_MODEL, &cfg->model);
    cfg->n_stages = 0;
}

/* ---- sections and keys ---- */

static const config_directive_t *config_find_directive(config_section_t section,
                                                       const char *key, size_t *row)
{
    for (size_t i = 0; i < CONFIG_N_DIRECTIVES; i++) {
        if (config_directives[i].section == section && strcmp(config_directives[i].key, key) == 0) {
            *row = i;
            return &config_directives[i];
        }
    }
    return NULL;
}

static void config_begin_section(config_parser_t *p, const char *name, size_t len)
{
    config_t *cfg = p->cfg;
    int line = p->lineno;
    int q = CONFIG_QUOTE_MAX;

    p->section = CONFIG_SECTION_NONE;
    p->stage = NULL;
    p->seen = 0;
    if (len >= sizeof p->section_name) {
        config_fail(p, line, "[%.*s...]: unknown section; allowed: [server], [model], "
                    "[stage.NAME]", q, name);
        return;
    }
    memcpy(p->section_name, name, len);
    p->section_name[len] = '\0';

    if (strcmp(p->section_name, "server") == 0 || strcmp(p->section_name, "model") == 0) {
        int server = p->section_name[0] == 's';
        int *first = server ? &p->server_line : &p->model_line;
        if (*first != 0) {
            config_fail(p, line, "[%s]: duplicate section; the first is at line %d; allowed: "
                        "one [%s] section", p->section_name, *first, p->section_name);
            return;
        }
        *first = line;
        p->section = server ? CONFIG_SECTION_SERVER : CONFIG_SECTION_MODEL;
        return;
    }

    if (strncmp(p->section_name, "stage.", 6) != 0) {
        config_fail(p, line, "[%s]: unknown section; allowed: [server], [model], [stage.NAME]",
                    p->section_name);
        return;
    }
    const char *stage_name = p->section_name + 6;
    if (!config_valid_stage_name(stage_name, strlen(stage_name))) {
        config_fail(p, line, "[%s]: bad stage name; allowed: [stage.NAME] with NAME 1 to %d of "
                    "a-z, 0-9 and '_'", p->section_name, CONFIG_NAME_MAX - 1);
        return;
    }
    const config_stage_t *dup = config_find_stage(cfg, stage_name);
    if (dup != NULL) {
        config_fail(p, line, "[%s]: duplicate section; the first is at line %d; allowed: one "
                    "section per stage", p->section_name, dup->line);
        return;
    }
    if (cfg->n_stages >= CONFIG_MAX_STAGES) {
        config_fail(p, line, "[%s]: too many stages; allowed: at most %d [stage.NAME] sections",
                    p->section_name, CONFIG_MAX_STAGES);
        return;
    }
    config_stage_t *st = &cfg->stages[cfg->n_stages++];
    config_apply_defaults(CONFIG_SECTION_STAGE, st);
    memcpy(st->name, stage_name, strlen(stage_name) + 1);
    st->line = line;
    p->section = CONFIG_SECTION_STAGE;
    p->stage = st;
}

static void config_fail_unknown_key(config_parser_t *p, const char *key)
{
    char keys[CONFIG_ERROR_MAX] = "";
    size_t n = 0;
    for (size_t i = 0; i < CONFIG_N_DIRECTIVES; i++) {
        if (config_directives[i].section != p->section)
            continue;
        int m = snprintf(keys + n, sizeof keys - n, "%s%s", n ? ", " : "",
                         config_directives[i].key);
        if (m < 0 || (size_t)m >= sizeof keys - n)
            break;
        n += (size_t)m;
    }
    config_fail(p, p->lineno, "[%s] %.*s: unknown key; allowed: %s", p->section_name,
                CONFIG_QUOTE_MAX, key, keys);
}

/* libinih's find_chars_or_comment (ini.c, release 55): the first of chars, or the start of an
 * inline comment (a ';' after whitespace), or the end. */
static const char *config_find_chars_or_comment(const char *s, const char *end,
                                                const char *chars)
{
    int was_space = 0;
    while (s < end && (chars == NULL || strchr(chars, *s) == NULL) &&
           !(was_space && strchr(INI_INLINE_COMMENT_PREFIXES, *s) != NULL)) {
        was_space = isspace((unsigned char)*s);
        s++;
    }
    return s;
}

/* libinih's handler: one key = value, or one continuation line of the previous key. */
static int config_handle_pair(void *user, const char *section, const char *key,
                              const char *value)
{
    config_parser_t *p = user;
    int line = p->lineno;
    int q = CONFIG_QUOTE_MAX;
    if (p->failed)
        return 0;
    if (p->section == CONFIG_SECTION_NONE) {
        config_fail(p, line, "%.*s: key outside any section; allowed: keys under [server], "
                    "[model] or [stage.NAME]", q, key);
        return 0;
    }
    if (strcmp(section, p->section_name) != 0) {
        config_fail(p, line, "internal error: the line reader is in [%s], libinih in [%.*s]",
                    p->section_name, q, section);
        return 0;
    }
    if (value == NULL) { /* only with INI_ALLOW_NO_VALUE, which this build lacks */
        config_fail(p, line, "[%s] %.*s: no value; allowed: key = value", section, q, key);
        return 0;
    }

    size_t row = 0;
    const config_directive_t *d = config_find_directive(p->section, key, &row);
    if (d == NULL) {
        config_fail_unknown_key(p, key);
        return 0;
    }

    void *base = p->section == CONFIG_SECTION_SERVER ? (void *)&p->cfg->server
                 : p->section == CONFIG_SECTION_MODEL ? (void *)&p->cfg->model
                                                       : (void *)p->stage;
    char why[CONFIG_ERROR_MAX];

    if (p->continuation) {
        if (!(d->flags & CONFIG_FLAG_MULTILINE)) {
            config_fail(p, line, "[%s] %s: an indented line continues this key's value; "
                        "allowed: one line (only args may continue on indented lines)",
                        section, key);
            return 0;
        }
        /* libinih 55 leaves an inline comment on a continuation line (later releases cut it):
         * cut it here so that both read the same file the same way. */
        size_t len = (size_t)(config_find_chars_or_comment(value, value + strlen(value), NULL) -
                              value);
        while (len > 0 && isspace((unsigned char)value[len - 1]))
            len--;
        /* Joined with one space: args is split on spaces anyway. */
        char joined[CONFIG_PATH_MAX > CONFIG_ARGS_MAX ? CONFIG_PATH_MAX : CONFIG_ARGS_MAX];
        const char *old = (const char *)base + d->offset;
        int n = snprintf(joined, sizeof joined, "%s%s%.*s", old, old[0] && len ? " " : "",
                         (int)len, value);
        if (n < 0 || (size_t)n >= d->size || (size_t)n >= sizeof joined) {
            config_fail(p, line, "[%s] %s: the value is longer than %zu characters with this "
                        "line; allowed: at most %zu", section, key, d->size - 1, d->size - 1);
            return 0;
        }
        if (config_apply_directive(d, base, joined, why, sizeof why) != 0) {
            config_fail(p, line, "[%s] %s: %s", section, key, why);
            return 0;
        }
        return 1;
    }

    if (p->seen & (UINT64_C(1) << row)) {
        config_fail(p, line, "[%s] %s: duplicate key; the first is at line %d; allowed: once "
                    "per section", section, key, p->row_line[row]);
        return 0;
    }
    p->seen |= UINT64_C(1) << row;
    p->row_line[row] = line;
    if (config_apply_directive(d, base, value, why, sizeof why) != 0) {
        config_fail(p, line, "[%s] %s: %s", section, key, why);
        return 0;
    }
    return 1;
}

/* ---- the line reader ---- */

/* Sorts line (length len, as handed to libinih) the way ini_parse_stream (ini.c, release 55)
 * will: comment, continuation, section header, key = value, or an error. Section headers are
 * handled here; keys are left to the handler. */
static void config_scan_line(config_parser_t *p, const char *line, size_t len)
{
    const char *s = line;
    const char *end = line + len;
    if (p->lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3; /* a UTF-8 byte order mark, which libinih skips */
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    while (s < end && isspace((unsigned char)*s))
        s++;

    p->continuation = 0;
    if (s == end || strchr(INI_START_COMMENT_PREFIXES, *s) != NULL)
        return;
    if (p->prev_key && s > line) {
        p->continuation = 1;
        return;
    }
    if (*s == '[') {
        const char *close = config_find_chars_or_comment(s + 1, end, "]");
        if (close == end || *close != ']') {
            config_fail(p, p->lineno, "'[' without ']'; allowed: a section header [server], "
                        "[model] or [stage.NAME]");
            return;
        }
        p->prev_key = 0;
        config_begin_section(p, s + 1, (size_t)(close - (s + 1)));
        return;
    }
    const char *eq = config_find_chars_or_comment(s, end, "=:");
    if (eq == end || (*eq != '=' && *eq != ':')) {
        config_fail(p, p->lineno, "no '=' on this line; allowed: key = value, a [section] "
                    "header, or a comment starting with '#' or ';'");
        return;
    }
    /* libinih keeps the key for continuations only when it is not empty. */
    const char *key_end = eq;
    while (key_end > s && isspace((unsigned char)key_end[-1]))
        key_end--;
    p->prev_key = key_end > s;
}

/* libinih's ini_reader, over the text in memory: one line per call. Returning NULL ends the
 * parse, which is how the first error stops it. */
static char *config_read_line(char *buf, int num, void *stream)
{
    config_parser_t *p = stream;
    if (p->failed || *p->pos == '\0' || num < 2)
        return NULL;
    const char *nl = strchr(p->pos, '\n');
    size_t len = nl != NULL ? (size_t)(nl - p->pos) + 1 : strlen(p->pos);
    p->lineno++;
    /* libinih would split a longer line and parse its tail as a line of its own. */
    if (len > (size_t)num - 1) {
        config_fail(p, p->lineno, "the line is longer than %d characters; allowed: at most %d "
                    "(libinih's INI_MAX_LINE)", num - 2, num - 2);
        return NULL;
    }
    memcpy(buf, p->pos, len);
    buf[len] = '\0';
    p->pos += len;
    config_scan_line(p, buf, len);
    return p->failed ? NULL : buf;
}

/* ---- loading ---- */

/* The line the key was last set on, 0 when it was not. */
static int config_row_line(const config_parser_t *p, config_section_t section, const char *key)
{
    size_t row;
    return config_find_directive(section, key, &row) != NULL ? p->row_line[row] : 0;
}

static int config_check_server(config_parser_t *p)
{
    const config_server_t *srv = &p->cfg->server;
    int hb = config_row_line(p, CONFIG_SECTION_SERVER, "heartbeat_ms");
    int hbt = config_row_line(p, CONFIG_SECTION_SERVER, "heartbeat_timeout_ms");
    int bo = config_row_line(p, CONFIG_SECTION_SERVER, "restart_backoff_ms");
    int bomax = config_row_line(p, CONFIG_SECTION_SERVER, "restart_backoff_max_ms");
    /* The key named is the one on the line named: the timeout when it was set, else the
     * interval (both at their defaults pass). */
    if (srv->heartbeat_timeout_ms <= srv->heartbeat_ms) {
        if (hbt != 0)
            config_fail(p, hbt, "[server] heartbeat_timeout_ms: %d is not more "
                        "than heartbeat_ms (%d); allowed: more than heartbeat_ms",
                        srv->heartbeat_timeout_ms, srv->heartbeat_ms);
        else
            config_fail(p, hb, "[server] heartbeat_ms: %d is not less than "
                        "heartbeat_timeout_ms (%d); allowed: less than heartbeat_timeout_ms",
                        srv->heartbeat_ms, srv->heartbeat_timeout_ms);
        return -1;
    }
    if (srv->restart_backoff_max_ms < srv->restart_backoff_ms) {
        if (bomax != 0)
            config_fail(p, bomax, "[server] restart_backoff_max_ms: %d is less "
                        "than restart_backoff_ms (%d); allowed: at least restart_backoff_ms",
                        srv->restart_backoff_max_ms, srv->restart_backoff_ms);
        else
            config_fail(p, bo, "[server] restart_backoff_ms: %d is more than "
                        "restart_backoff_max_ms (%d); allowed: at most restart_backoff_max_ms",
                        srv->restart_backoff_ms, srv->restart_backoff_max_ms);
        return -1;
    }
    return 0;
}

static int config_check_stages(config_parser_t *p)
{
    const config_t *cfg = p->cfg;
    if (cfg->n_stages == 0) {
        config_fail(p, 0, "no [stage.NAME] section; allowed: 1 to %d stages", CONFIG_MAX_STAGES);
        return -1;
    }
    /* With today's constants (16 stages of at most 8 replicas) this cannot fail; it stays so
     * that raising either constant cannot overflow the supervisor's child table. */
    int total = 0;
    for (int i = 0; i < cfg->n_stages; i++) {
        total += cfg->stages[i].replicas;
        if (total > CONFIG_MAX_CHILDREN) {
            config_fail(p, cfg->stages[i].line, "[stage.%s] replicas: %d replicas in all up to "
                        "this stage; allowed: at most %d over all stages", cfg->stages[i].name,
                        total, CONFIG_MAX_CHILDREN);
            return -1;
        }
    }
    return 0;
}

int config_load_string(config_t *cfg, const char *text, const char *name, char *err,
                       size_t errlen)
{
    config_parser_t *p = calloc(1, sizeof *p);
    if (name == NULL)
        name = "<string>";
    if (p == NULL) {
        config_set_error(err, errlen, "%s: out of memory", name);
        return -1;
    }
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    config_defaults(cfg);
    p->cfg = cfg;
    p->name = name;
    p->err = err;
    p->errlen = errlen;
    p->pos = text != NULL ? text : "";

    size_t namelen = strlen(name);
    if (namelen >= sizeof cfg->path)
        config_fail(p, 0, "the file name is longer than %zu characters", sizeof cfg->path - 1);
    else
        memcpy(cfg->path, name, namelen + 1);

    int rc = p->failed ? 0 : ini_parse_stream(config_read_line, p, config_handle_pair, p);
    if (!p->failed && rc != 0) {
        /* libinih saw an error the reader did not: the two disagree on the syntax. */
        config_fail(p, rc > 0 ? rc : 0, "internal error: libinih rejected this line (%d) "
                    "although the line reader accepted it", rc);
    }
    if (!p->failed && config_check_server(p) == 0)
        config_check_stages(p);
    int failed = p->failed;
    free(p);
    return failed ? -1 : 0;
}

/* Reads the whole file: one parse over memory gives the same line numbers and limits for a
 * file and for a string. */
static char *config_read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        config_set_error(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        fclose(f);
        config_set_error(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    for (;;) {
        if (len == cap) {
            if (cap > CONFIG_FILE_MAX) {
                config_set_error(err, errlen, "%s: larger than %d bytes; is it a config file?",
                                 path, CONFIG_FILE_MAX);
                goto fail;
            }
            char *bigger = realloc(buf, cap * 2 + 1);
            if (bigger == NULL) {
                config_set_error(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            buf = bigger;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                config_set_error(err, errlen, "%s: %s", path, strerror(errno));
                goto fail;
            }
            break;
        }
    }
    fclose(f);
    if (len > CONFIG_FILE_MAX) {
        config_set_error(err, errlen, "%s: larger than %d bytes; is it a config file?", path,
                         CONFIG_FILE_MAX);
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    /* A NUL would end the text early and hide the rest of the file. */
    const char *nul = memchr(buf, '\0', len);
    if (nul != NULL) {
        int line = 1;
        for (const char *s = buf; s < nul; s++)
            line += *s == '\n';
        config_set_error(err, errlen, "%s:%d: a NUL byte; allowed: text", path, line);
        free(buf);
        return NULL;
    }
    return buf;

fail:
    fclose(f);
    free(buf);
    return NULL;
}

int config_load(config_t *cfg, const char *path, char *err, size_t errlen)
{
    char *text = config_read_file(path, err, errlen);
    if (text == NULL)
        return -1;
    int rc = config_load_string(cfg, text, path, err, errlen);
    free(text);
    return rc;
}

const config_stage_t *config_find_stage(const config_t *cfg, const char *name)
{
    for (int i = 0; i < cfg->n_stages; i++)
        if (strcmp(cfg->stages[i].name, name) == 0)
            return &cfg->stages[i];
    return NULL;
}
