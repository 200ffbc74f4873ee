/* test_config: the config parser against its fixtures, the default config file, and the
 * defaults documented in config.h and conf/diffusiond.conf. Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ipc/log.h"
#include "supervisor/config.h"

#define FIXTURES "tests/fixtures/config/"
#define DEFAULT_CONF "conf/diffusiond.conf"

static void assert_contains(const char *text, const char *want)
{
    if (strstr(text, want) == NULL)
        fail_msg("expected \"%s\" in \"%s\"", want, text);
}

/* Loads text that must fail, and returns its message. */
static const char *load_bad_string(const char *text)
{
    static char err[CONFIG_ERROR_MAX];
    static config_t cfg;
    err[0] = '\0';
    if (config_load_string(&cfg, text, "t.conf", err, sizeof err) == 0)
        fail_msg("loaded although it should not:\n%s", text);
    assert_true(err[0] != '\0');
    return err;
}

static void load_good_string(config_t *cfg, const char *text)
{
    char err[CONFIG_ERROR_MAX] = "";
    if (config_load_string(cfg, text, "t.conf", err, sizeof err) != 0)
        fail_msg("failed: %s\n%s", err, text);
}

/* The defaults in the comments of config.h. */
static void test_defaults_match_header(void **state)
{
    config_t cfg;
    config_defaults(&cfg);

    const config_server_t *s = &cfg.server;
    assert_string_equal(s->listen, "127.0.0.1:8000");
    assert_string_equal(s->instance, "diffusiond");
    assert_string_equal(s->runtime_dir, "");
    assert_int_equal(s->log_level, LOG_LEVEL_INFO);
    assert_int_equal(s->heartbeat_ms, 1000);
    assert_int_equal(s->heartbeat_timeout_ms, 10000);
    assert_int_equal(s->ready_timeout_ms, 120000);
    assert_int_equal(s->drain_timeout_ms, 30000);
    assert_int_equal(s->stop_timeout_ms, 5000);
    assert_int_equal(s->restart_backoff_ms, 100);
    assert_int_equal(s->restart_backoff_max_ms, 30000);
    assert_int_equal(s->restart_budget, 10);
    assert_int_equal(s->restart_window_ms, 300000);
    assert_int_equal(s->throttle_ms, 10000);
    assert_int_equal(s->http_body_max, 1u << 20);
    assert_int_equal(s->http_prompt_max, 8192);
    assert_int_equal(s->http_pixels_max, 4194304);
    assert_int_equal(s->http_steps_max, 100);
    assert_int_equal(s->http_n_max, 10);
    assert_int_equal(s->http_queue_max, 64);
    assert_int_equal(s->http_timeout_ms, 600000);
    assert_int_equal(s->http_io_timeout_ms, 30000);
    assert_string_equal(s->http_api_keys, "");
    assert_string_equal(s->http_api_key_file, "");
    assert_string_equal(s->http_model, "");
    assert_string_equal(cfg.model.path, "");
    assert_string_equal(cfg.model.dtype, "f32");
    assert_int_equal(cfg.n_stages, 0);
    assert_string_equal(cfg.path, "");

    /* Stage defaults are applied when a section opens. */
    load_good_string(&cfg, "[stage.a]\n");
    const config_stage_t *st = &cfg.stages[0];
    assert_int_equal(cfg.n_stages, 1);
    assert_string_equal(st->name, "a");
    assert_string_equal(st->program, "");
    assert_string_equal(st->args, "");
    assert_int_equal(st->replicas, 1);
    assert_false(st->device.cuda);
    assert_int_equal(st->device.index, 0);
    assert_int_equal(st->threads, 0);
    assert_int_equal(st->pool_size, 64u << 20);
    assert_int_equal(st->batch_size, 1);
    assert_int_equal(st->batch_wait_ms, 0);
    assert_int_equal(st->queue_depth, 16);
    assert_int_equal(st->line, 1);
}

static void test_default_conf_loads(void **state)
{
    config_t cfg;
    char err[CONFIG_ERROR_MAX] = "";
    if (config_load(&cfg, DEFAULT_CONF, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(cfg.path, DEFAULT_CONF);
    assert_string_equal(cfg.server.instance, "diffusiond");
    assert_string_equal(cfg.server.listen, "127.0.0.1:8000");
    assert_string_equal(cfg.model.path, "models/tiny-qwen-image");
    assert_int_equal(cfg.n_stages, 5);
    static const char *const names[] = {"ingress", "text", "denoise", "vae", "encode"};
    for (int i = 0; i < 5; i++) {
        const config_stage_t *st = &cfg.stages[i];
        assert_string_equal(st->name, names[i]);
        assert_string_equal(st->program, ""); /* diffusiond-NAME beside diffusiond */
        assert_ptr_equal(config_find_stage(&cfg, names[i]), st);
        assert_true(st->line > 0);
        if (i > 0)
            assert_true(cfg.stages[i - 1].line < st->line);
    }
    assert_int_equal(cfg.stages[0].pool_size, 0); /* ingress makes no tensors */
}

/* The keys of a section, as the parser lists them when it meets an unknown one: the test then
 * follows the directive table instead of keeping a copy of it. */
static int section_keys(const char *section, char keys[][40], int max)
{
    char text[128];
    snprintf(text, sizeof text, "[stage.x]\n[%s]\nno_such_key = 1\n",
             strcmp(section, "stage.x") == 0 ? "stage.y" : section);
    const char *err = load_bad_string(text);
    const char *list = strstr(err, "allowed: ");
    assert_non_null(list);
    list += strlen("allowed: ");
    int n = 0;
    while (*list && n < max) {
        size_t len = strcspn(list, ",");
        assert_true(len > 0 && len < 40);
        memcpy(keys[n], list, len);
        keys[n][len] = '\0';
        n++;
        list += len;
        if (*list == ',')
            list += 2;
    }
    return n;
}

/* Setting a key to its documented default must give exactly the config of not setting it. */
static void check_documented_default(const char *section, const char *key, const char *value)
{
    char with[512];
    config_t def, got;
    if (strcmp(section, "stage") == 0)
        snprintf(with, sizeof with, "[stage.x]\n%s = %s\n", key, value);
    else
        snprintf(with, sizeof with, "[stage.x]\n[%s]\n%s = %s\n", section, key, value);
    load_good_string(&def, "[stage.x]\n");
    load_good_string(&got, with);
    if (memcmp(&def, &got, sizeof def) != 0)
        fail_msg("%s: [%s] %s = %s is documented as the default but differs from the code's",
                 DEFAULT_CONF, section, key, value);
}

/* Every key of every section is documented in conf/diffusiond.conf as "#key = DEFAULT" under
 * its section (stage keys under a "#[stage.NAME]" line), and that default is the code's. */
static void test_default_conf_documents_every_key(void **state)
{
    static const char *const sections[] = {"server", "model", "stage"};
    char keys[3][32][40];
    int n_keys[3];
    int documented[3][32] = {{0}};
    for (int s = 0; s < 3; s++) {
        n_keys[s] = section_keys(strcmp(sections[s], "stage") == 0 ? "stage.x" : sections[s],
                                 keys[s], 32);
        assert_true(n_keys[s] >= 2);
    }
    assert_int_equal(n_keys[0], 25);
    assert_int_equal(n_keys[1], 2);
    assert_int_equal(n_keys[2], 9);

    FILE *f = fopen(DEFAULT_CONF, "r");
    assert_non_null(f);
    char line[256];
    int sec = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        const char *s = line;
        int comment = *s == '#';
        if (comment)
            s += 1 + strspn(s + 1, " ");
        if (*s == '[') {
            sec = strncmp(s, "[server]", 8) == 0   ? 0
                  : strncmp(s, "[model]", 7) == 0  ? 1
                  : strncmp(s, "[stage.", 7) == 0 ? 2
                                                   : -1;
            continue;
        }
        if (!comment || sec < 0)
            continue;
        size_t klen = strspn(s, "abcdefghijklmnopqrstuvwxyz_");
        const char *eq = s + klen + strspn(s + klen, " ");
        if (klen == 0 || *eq != '=')
            continue; /* prose */
        const char *value = eq + 1 + strspn(eq + 1, " ");
        for (int k = 0; k < n_keys[sec]; k++) {
            if (strlen(keys[sec][k]) == klen && strncmp(keys[sec][k], s, klen) == 0) {
                char key[40];
                memcpy(key, s, klen);
                key[klen] = '\0';
                check_documented_default(sections[sec], key, value);
                documented[sec][k]++;
            }
        }
    }
    fclose(f);
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < n_keys[s]; k++)
            if (documented[s][k] != 1)
                fail_msg("%s: [%s] %s is documented %d times; want once as '#%s = DEFAULT'",
                         DEFAULT_CONF, sections[s], keys[s][k], documented[s][k], keys[s][k]);
}

static void load_fixture(config_t *cfg, const char *name)
{
    char path[256], err[CONFIG_ERROR_MAX] = "";
    snprintf(path, sizeof path, FIXTURES "%s", name);
    if (config_load(cfg, path, err, sizeof err) != 0)
        fail_msg("%s", err);
}

static void test_good_full(void **state)
{
    config_t cfg;
    load_fixture(&cfg, "good_full.conf");
    const config_server_t *s = &cfg.server;
    assert_string_equal(s->listen, "[::1]:9000");
    assert_string_equal(s->instance, "test-1_a");
    assert_string_equal(s->runtime_dir, "/run/diffusiond-test");
    assert_int_equal(s->log_level, LOG_LEVEL_DEBUG);
    assert_int_equal(s->heartbeat_ms, 200);
    assert_int_equal(s->heartbeat_timeout_ms, 2000);
    assert_int_equal(s->ready_timeout_ms, 60000);
    assert_int_equal(s->drain_timeout_ms, 1000);
    assert_int_equal(s->stop_timeout_ms, 2000);
    assert_int_equal(s->restart_backoff_ms, 50);
    assert_int_equal(s->restart_backoff_max_ms, 5000);
    assert_int_equal(s->restart_budget, 3);
    assert_int_equal(s->restart_window_ms, 60000);
    assert_int_equal(s->throttle_ms, 0);
    assert_string_equal(cfg.model.path, "/models/sd-turbo");
    assert_string_equal(cfg.model.dtype, "bf16");

    assert_int_equal(cfg.n_stages, 2);
    const config_stage_t *t = config_find_stage(&cfg, "text");
    assert_ptr_equal(t, &cfg.stages[0]);
    assert_string_equal(t->program, "/usr/lib/diffusiond/diffusiond-text");
    assert_string_equal(t->args, "--verbose");
    assert_int_equal(t->replicas, 2);
    assert_true(t->device.cuda);
    assert_int_equal(t->device.index, 1);
    assert_int_equal(t->threads, 8);
    assert_int_equal(t->pool_size, UINT64_C(1) << 30);
    assert_int_equal(t->batch_size, 4);
    assert_int_equal(t->batch_wait_ms, 20);
    assert_int_equal(t->queue_depth, 64);
    assert_int_equal(t->line, 22);

    const config_stage_t *u = config_find_stage(&cfg, "unet");
    assert_ptr_equal(u, &cfg.stages[1]);
    assert_int_equal(u->replicas, 8);
    assert_int_equal(u->device.index, 63);
    assert_int_equal(u->pool_size, 0);
    assert_int_equal(u->queue_depth, 16); /* not set: the default */
    assert_int_equal(u->line, 33);
    assert_null(config_find_stage(&cfg, "vae"));
}

static void test_good_syntax(void **state)
{
    config_t cfg;
    load_fixture(&cfg, "good_syntax.conf");
    assert_string_equal(cfg.server.listen, "0.0.0.0:8080"); /* inline comment cut */
    assert_int_equal(cfg.server.log_level, LOG_LEVEL_WARN); /* "key: value" */
    assert_int_equal(cfg.n_stages, 2);
    assert_string_equal(cfg.stages[0].name, "empty"); /* a section with no keys still counts */
    assert_int_equal(cfg.stages[0].line, 7);
    assert_string_equal(cfg.stages[1].name, "multi");
    assert_int_equal(cfg.stages[1].line, 9);
    /* Continuations join with one space; their inline comments are cut; a blank line does not
     * end a value in libinih, so the tab-indented line still continues args. */
    assert_string_equal(cfg.stages[1].args, "--one --two 2 --three");
    assert_int_equal(cfg.stages[1].pool_size, 4096);
}

static void test_every_good_fixture_loads(void **state)
{
    DIR *dir = opendir(FIXTURES);
    assert_non_null(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (strncmp(e->d_name, "good_", 5) != 0)
            continue;
        config_t cfg;
        load_fixture(&cfg, e->d_name);
        assert_true(cfg.n_stages >= 1);
        n++;
    }
    closedir(dir);
    assert_int_equal(n, 3);
}

/* Each bad fixture: where the error must point, and two words the message must hold (the key,
 * and what is allowed or wrong). */
typedef struct {
    const char *file;
    const char *where;
    const char *key;
    const char *what;
} bad_fixture_t;

static const bad_fixture_t bad_fixtures[] = {
    {"bad_args_long.conf", "bad_args_long.conf:5:", "[stage.text] args", "at most 511"},
    {"bad_backoff.conf", "bad_backoff.conf:3:", "restart_backoff_max_ms", "restart_backoff_ms"},
    {"bad_continuation.conf", "bad_continuation.conf:4:", "[stage.text] replicas", "indented"},
    {"bad_device.conf", "bad_device.conf:3:", "device", "cuda:N with N 0..63"},
    {"bad_device_name.conf", "bad_device_name.conf:3:", "device", "'gpu0'"},
    {"bad_dtype.conf", "bad_dtype.conf:3:", "[model] dtype", "f32, bf16, f16"},
    {"bad_duplicate_key.conf", "bad_duplicate_key.conf:5:", "heartbeat_ms", "line 2"},
    {"bad_duplicate_server.conf", "bad_duplicate_server.conf:5:", "[server]", "line 1"},
    {"bad_duplicate_stage.conf", "bad_duplicate_stage.conf:6:", "[stage.text]", "line 1"},
    {"bad_duration_float.conf", "bad_duration_float.conf:2:", "drain_timeout_ms", "'1.5'"},
    {"bad_duration_range.conf", "bad_duration_range.conf:2:", "heartbeat_ms", "10..60000"},
    {"bad_heartbeat_slow.conf", "bad_heartbeat_slow.conf:3:", "[server] heartbeat_ms",
     "heartbeat_timeout_ms (10000)"},
    {"bad_heartbeat_timeout.conf", "bad_heartbeat_timeout.conf:3:",
     "[server] heartbeat_timeout_ms", "heartbeat_ms (1000)"},
    {"bad_inline_comment.conf", "bad_inline_comment.conf:2:", "heartbeat_ms", "whole number"},
    {"bad_instance.conf", "bad_instance.conf:2:", "instance", "a-z, 0-9, '_' and '-'"},
    {"bad_instance_long.conf", "bad_instance_long.conf:2:", "instance", "at most 31"},
    {"bad_int.conf", "bad_int.conf:3:", "threads", "0..1024"},
    {"bad_int_empty.conf", "bad_int_empty.conf:3:", "batch_size", "1..64"},
    {"bad_int_overflow.conf", "bad_int_overflow.conf:3:", "batch_size", "1..64"},
    {"bad_int_range.conf", "bad_int_range.conf:3:", "queue_depth", "1..100000"},
    {"bad_key_outside_section.conf", "bad_key_outside_section.conf:2:", "listen",
     "outside any section"},
    {"bad_key_wrong_section.conf", "bad_key_wrong_section.conf:2:", "[server] replicas",
     "unknown key"},
    {"bad_listen.conf", "bad_listen.conf:2:", "listen", "HOST:PORT"},
    {"bad_listen_port.conf", "bad_listen_port.conf:2:", "listen", "1..65535"},
    {"bad_log_level.conf", "bad_log_level.conf:2:", "log_level", "error, warn, info, debug"},
    {"bad_long_line.conf", "bad_long_line.conf:4:", "longer than 198", "at most 198"},
    {"bad_no_stages.conf", "bad_no_stages.conf: ", "[stage.NAME]", "1 to 16"},
    {"bad_replicas.conf", "bad_replicas.conf:7:", "replicas", "1..8"},
    {"bad_section_bracket.conf", "bad_section_bracket.conf:1:", "']'", "[server]"},
    {"bad_size_negative.conf", "bad_size_negative.conf:3:", "pool_size", "0..256G"},
    {"bad_size_overflow.conf", "bad_size_overflow.conf:3:", "pool_size", "not a size"},
    {"bad_size_range.conf", "bad_size_range.conf:3:", "pool_size", "out of range"},
    {"bad_size_suffix.conf", "bad_size_suffix.conf:3:", "pool_size", "K, M or G"},
    {"bad_stage_name.conf", "bad_stage_name.conf:2:", "[stage.Text]", "a-z, 0-9 and '_'"},
    {"bad_stage_name_empty.conf", "bad_stage_name_empty.conf:2:", "[stage.]", "1 to 31"},
    {"bad_stage_name_long.conf", "bad_stage_name_long.conf:1:", "stage.aaaa", "1 to 31"},
    {"bad_syntax.conf", "bad_syntax.conf:3:", "'='", "key = value"},
    {"bad_too_many_stages.conf", "bad_too_many_stages.conf:18:", "[stage.s16]", "at most 16"},
    {"bad_unknown_key.conf", "bad_unknown_key.conf:4:", "[stage.text] replica:",
     "program, args, replicas"},
    {"bad_unknown_section.conf", "bad_unknown_section.conf:3:", "[servre]",
     "[server], [model], [stage.NAME]"},
};

static void test_bad_fixtures(void **state)
{
    for (size_t i = 0; i < sizeof bad_fixtures / sizeof bad_fixtures[0]; i++) {
        const bad_fixture_t *b = &bad_fixtures[i];
        char path[256], err[CONFIG_ERROR_MAX] = "";
        config_t cfg;
        snprintf(path, sizeof path, FIXTURES "%s", b->file);
        if (config_load(&cfg, path, err, sizeof err) == 0)
            fail_msg("%s loaded although it should not", path);
        /* The message begins with the path the caller gave. */
        assert_int_equal(strncmp(err, path, strlen(path)), 0);
        assert_contains(err, b->where);
        assert_contains(err, b->key);
        assert_contains(err, b->what);
    }
}

/* A bad fixture left out of the table above would test nothing. */
static void test_every_bad_fixture_is_checked(void **state)
{
    DIR *dir = opendir(FIXTURES);
    assert_non_null(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (strncmp(e->d_name, "bad_", 4) != 0)
            continue;
        int found = 0;
        for (size_t i = 0; i < sizeof bad_fixtures / sizeof bad_fixtures[0]; i++)
            found |= strcmp(bad_fixtures[i].file, e->d_name) == 0;
        if (!found)
            fail_msg("%s%s is not in bad_fixtures[]", FIXTURES, e->d_name);
        n++;
    }
    closedir(dir);
    assert_int_equal(n, (int)(sizeof bad_fixtures / sizeof bad_fixtures[0]));
}

static void test_parse_size(void **state)
{
    static const struct {
        const char *text;
        uint64_t want;
    } good[] = {
        {"0", 0},
        {"4096", 4096},
        {"64K", 64u << 10},
        {"64k", 64u << 10},
        {"64M", 64u << 20},
        {"1G", UINT64_C(1) << 30},
        {"3g", UINT64_C(3) << 30},
        {"18446744073709551615", UINT64_MAX},
        {"17179869183G", UINT64_C(17179869183) << 30}, /* the largest G that fits */
    };
    static const char *const bad[] = {
        "", "-1", "+1", " 1", "1 ", "1.5", "1KB", "1T", "K", "0x10", "64MM",
        "18446744073709551616", /* 2^64 */
        "17179869184G",         /* 2^64 bytes */
        "99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 12345;
        if (config_parse_size(good[i].text, &v) != 0)
            fail_msg("config_parse_size(\"%s\") failed", good[i].text);
        assert_int_equal(v, good[i].want);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 12345;
        if (config_parse_size(bad[i], &v) == 0)
            fail_msg("config_parse_size(\"%s\") accepted", bad[i]);
        assert_int_equal(v, 12345); /* untouched on failure */
    }
}

static void test_parse_device(void **state)
{
    config_device_t d;
    assert_int_equal(config_parse_device("cpu", &d), 0);
    assert_false(d.cuda);
    assert_int_equal(d.index, 0);
    assert_int_equal(config_parse_device("cuda:0", &d), 0);
    assert_true(d.cuda);
    assert_int_equal(d.index, 0);
    assert_int_equal(config_parse_device("cuda:7", &d), 0);
    assert_int_equal(d.index, 7);
    assert_int_equal(config_parse_device("cuda:63", &d), 0);
    assert_true(d.cuda);
    assert_int_equal(d.index, 63);
    static const char *const bad[] = {
        "", "CPU", "cuda", "cuda:", "cuda:64", "cuda:-1", "cuda:+1", "cuda:1x",
        "cuda: 1", "cuda:001", "cuda:99", "gpu:0", "cpu:0", "cuda0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        d.cuda = false;
        d.index = 42;
        if (config_parse_device(bad[i], &d) == 0)
            fail_msg("config_parse_device(\"%s\") accepted", bad[i]);
        assert_int_equal(d.index, 42);
    }
}

static void test_parse_bool(void **state)
{
    static const char *const yes[] = {"true", "yes", "on", "1", "TRUE", "Yes"};
    static const char *const no[] = {"false", "no", "off", "0", "OFF"};
    static const char *const bad[] = {"", "2", "y", "enable", "truee", " true"};
    bool b;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        b = false;
        assert_int_equal(config_parse_bool(yes[i], &b), 0);
        assert_true(b);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        b = true;
        assert_int_equal(config_parse_bool(no[i], &b), 0);
        assert_false(b);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_bool(bad[i], &b) == 0)
            fail_msg("config_parse_bool(\"%s\") accepted", bad[i]);
}

static void test_load_string(void **state)
{
    config_t cfg;
    char err[CONFIG_ERROR_MAX];
    const char *text = "[server]\n"
                       "instance = unit_test\n"
                       "restart_budget = 0\n"
                       "[stage.a]\n"
                       "device = cuda:2\n"
                       "pool_size = 0\n"
                       "[stage.b_2]\n"
                       "replicas = 8\n";
    assert_int_equal(config_load_string(&cfg, text, "inline", err, sizeof err), 0);
    assert_string_equal(cfg.path, "inline");
    assert_string_equal(cfg.server.instance, "unit_test");
    assert_int_equal(cfg.server.restart_budget, 0);
    assert_int_equal(cfg.n_stages, 2);
    assert_int_equal(cfg.stages[0].device.index, 2);
    assert_int_equal(cfg.stages[0].pool_size, 0);
    assert_int_equal(cfg.stages[0].line, 4);
    assert_int_equal(cfg.stages[1].replicas, 8);
    assert_int_equal(cfg.stages[1].line, 7);

    /* A second load starts from the defaults again: nothing of the first is left. */
    assert_int_equal(config_load_string(&cfg, "[stage.c]\n", NULL, err, sizeof err), 0);
    assert_int_equal(cfg.n_stages, 1);
    assert_string_equal(cfg.server.instance, "diffusiond");
    assert_string_equal(cfg.path, "<string>");

    /* The name stands for the file in messages. */
    assert_int_equal(config_load_string(&cfg, "[stage.a]\nthreads = -1\n", "mine.ini", err,
                                        sizeof err), -1);
    assert_contains(err, "mine.ini:2: [stage.a] threads: -1 is out of range; allowed: 0..1024");

    /* Sixteen stages of eight replicas is the most there can be, and it is allowed. */
    char big[2048] = "";
    for (int i = 0; i < CONFIG_MAX_STAGES; i++) {
        char sec[64];
        snprintf(sec, sizeof sec, "[stage.s%d]\nreplicas = %d\n", i, CONFIG_MAX_REPLICAS);
        strcat(big, sec);
    }
    load_good_string(&cfg, big);
    assert_int_equal(cfg.n_stages, CONFIG_MAX_STAGES);
    assert_true(CONFIG_MAX_STAGES * CONFIG_MAX_REPLICAS <= CONFIG_MAX_CHILDREN);
}

/* libinih's line buffer holds 198 characters and the newline; a longer line is an error that
 * names it rather than being split into two lines. */
static void test_long_line(void **state)
{
    char text[1024];
    char value[400];
    config_t cfg;
    /* "args = " is 7 characters: a value of 191 makes a line of exactly 198. */
    memset(value, 'a', 191);
    value[191] = '\0';
    snprintf(text, sizeof text, "[stage.a]\n\nargs = %s\n", value);
    load_good_string(&cfg, text);
    assert_int_equal(strlen(cfg.stages[0].args), 191);

    memset(value, 'a', 192);
    value[192] = '\0';
    snprintf(text, sizeof text, "[stage.a]\n\nargs = %s\nreplicas = 2\n", value);
    const char *err = load_bad_string(text);
    assert_contains(err, "t.conf:3: ");
    assert_contains(err, "longer than 198");

    /* A long comment is as long a line; it is not silently half-parsed. */
    memset(value, '#', 300);
    value[300] = '\0';
    snprintf(text, sizeof text, "[stage.a]\n%s\n", value);
    assert_contains(load_bad_string(text), "t.conf:2: ");
}

static void test_unknown_section(void **state)
{
    const char *err = load_bad_string("[stage.a]\n\n[models]\npath = /x\n");
    assert_contains(err, "t.conf:3: [models]: unknown section");
    assert_contains(err, "[server], [model], [stage.NAME]");
    err = load_bad_string("[stage]\n");
    assert_contains(err, "t.conf:1: [stage]: unknown section");
    /* Longer than libinih keeps (49 characters): still named, still unknown. */
    err = load_bad_string("[stage.a]\n[server_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx]\n");
    assert_contains(err, "t.conf:2: [server_xxxx");
    assert_contains(err, "unknown section");
}

static void test_missing_file(void **state)
{
    config_t cfg;
    char err[CONFIG_ERROR_MAX] = "";
    assert_int_equal(config_load(&cfg, FIXTURES "no_such_file.conf", err, sizeof err), -1);
    assert_string_equal(err, FIXTURES "no_such_file.conf: No such file or directory");
    assert_int_equal(config_load(&cfg, FIXTURES, err, sizeof err), -1);
    assert_string_equal(err, FIXTURES ": Is a directory");
}

static void test_file_too_large(void **state)
{
    config_t cfg;
    char err[CONFIG_ERROR_MAX] = "";
    assert_int_equal(config_load(&cfg, "/dev/zero", err, sizeof err), -1);
    assert_contains(err, "/dev/zero: larger than 1048576 bytes");
}

/* A NUL would end the text early: the rest of the file, with its errors, would go unread. */
static void test_nul_byte(void **state)
{
    char path[] = "/tmp/test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char text[] = "[stage.a]\nreplicas = 2\x00\nreplicas = 99\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    config_t cfg;
    char err[CONFIG_ERROR_MAX] = "";
    int rc = config_load(&cfg, path, err, sizeof err);
    unlink(path);
    assert_int_equal(rc, -1);
    assert_contains(err, ":2: a NUL byte");
}

static void test_syntax_details(void **state)
{
    config_t cfg;
    /* A UTF-8 byte order mark is skipped; a section header takes an inline comment. */
    load_good_string(&cfg, "\xEF\xBB\xBF[stage.a] ; the first\nreplicas = 3 ; three\n");
    assert_int_equal(cfg.stages[0].replicas, 3);
    /* ';' not after a space is part of the value. */
    load_good_string(&cfg, "[stage.a]\nargs = a;b\n");
    assert_string_equal(cfg.stages[0].args, "a;b");
    /* An indented line right after a section header is not a continuation: it is a key. */
    load_good_string(&cfg, "[stage.a]\n  replicas = 2\n");
    assert_int_equal(cfg.stages[0].replicas, 2);
    /* args may start empty and continue on the next line, without a leading space. */
    load_good_string(&cfg, "[stage.a]\nargs =\n  x\n");
    assert_string_equal(cfg.stages[0].args, "x");
    /* Keys are lower case, as written in the table. */
    assert_contains(load_bad_string("[stage.a]\nReplicas = 2\n"), "t.conf:2: [stage.a] Replicas: unknown key");
    /* A key with no name. */
    assert_contains(load_bad_string("[stage.a]\n= 2\n"), "t.conf:2: [stage.a] : unknown key");
    /* Stage count and duplicate checks see sections that hold no keys. */
    assert_contains(load_bad_string("[stage.a]\n[stage.b]\n[stage.a]\n"), "t.conf:3: [stage.a]: duplicate section; the first is at line 1");
    /* The empty text has no stage. */
    assert_contains(load_bad_string(""), "t.conf: no [stage.NAME] section");
}

/* A message longer than the buffer is cut, never overrun; a NULL buffer is allowed. */
static void test_error_buffer(void **state)
{
    config_t cfg;
    char err[24];
    memset(err, 'x', sizeof err);
    assert_int_equal(config_load_string(&cfg, "[bogus]\n", "t.conf", err, 16), -1);
    assert_int_equal(strlen(err), 15);
    assert_string_equal(err, "t.conf:1: [bogu");
    assert_int_equal(err[16], 'x');
    assert_int_equal(config_load_string(&cfg, "[bogus]\n", "t.conf", NULL, 0), -1);
    assert_int_equal(config_load(&cfg, "/nonexistent/x", NULL, 0), -1);
    assert_int_equal(config_load_string(&cfg, "[stage.a]\n", "t.conf", NULL, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_match_header),
        cmocka_unit_test(test_default_conf_loads),
        cmocka_unit_test(test_default_conf_documents_every_key),
        cmocka_unit_test(test_good_full),
        cmocka_unit_test(test_good_syntax),
        cmocka_unit_test(test_every_good_fixture_loads),
        cmocka_unit_test(test_bad_fixtures),
        cmocka_unit_test(test_every_bad_fixture_is_checked),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_device),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test(test_load_string),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_file_too_large),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_syntax_details),
        cmocka_unit_test(test_error_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
