/* test_gen_job: the generation job's parameters survive the trip through JSON exactly, and
 * every malformed or out-of-bounds field is refused by name on arrival. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/gen_job.h"

static gen_params_t sample(void)
{
    return (gen_params_t){.prompt = "a cat \xe7\x8c\xab \"quoted\"\n", .negative_prompt = "",
                          .width = 1024, .height = 768, .steps = 50, .true_cfg_scale = 4.25,
                          .seed = UINT64_MAX, .max_sequence_length = 512,
                          .format = GEN_FORMAT_WEBP, .quality = 90};
}

static void test_round_trip(void **state)
{
    (void)state;
    gen_params_t in = sample(), out;
    char *json, err[256];
    size_t len;
    assert_int_equal(gen_params_encode(&in, &json, &len, err, sizeof err), 0);
    if (gen_params_decode((const uint8_t *)json, len, &out, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(out.prompt, in.prompt);
    assert_string_equal(out.negative_prompt, "");
    assert_int_equal(out.width, 1024);
    assert_int_equal(out.height, 768);
    assert_int_equal(out.steps, 50);
    assert_true(out.true_cfg_scale == 4.25);
    assert_true(out.seed == UINT64_MAX);
    assert_int_equal(out.max_sequence_length, 512);
    assert_int_equal(out.format, GEN_FORMAT_WEBP);
    assert_int_equal(out.quality, 90);
    gen_params_free(&out);
    free(json);
    in.negative_prompt = NULL; /* none: stays none */
    assert_int_equal(gen_params_encode(&in, &json, &len, err, sizeof err), 0);
    assert_int_equal(gen_params_decode((const uint8_t *)json, len, &out, err, sizeof err), 0);
    assert_null(out.negative_prompt);
    gen_params_free(&out);
    free(json);
}

static void test_encode_refuses_bad_fields(void **state)
{
    (void)state;
    char *json, err[256];
    size_t len;
    gen_params_t p = sample();
    p.width = 1000; /* not a multiple of 16 */
    assert_int_equal(gen_params_encode(&p, &json, &len, err, sizeof err), -1);
    assert_non_null(strstr(err, "size"));
    p = sample();
    p.steps = 0;
    assert_int_equal(gen_params_encode(&p, &json, &len, err, sizeof err), -1);
    p = sample();
    p.prompt = "bad \xff utf-8";
    assert_int_equal(gen_params_encode(&p, &json, &len, err, sizeof err), -1);
}

static void test_decode_refuses(void **state)
{
    (void)state;
    static const struct {
        const char *json, *why;
    } bad[] = {
        {"", "not a JSON object"},
        {"[1]", "not a JSON object"},
        {"{\"prompt\":1}", "prompt"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":1,\"seed\":\"-1\"}", "seed"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":1,\"seed\":\"99999999999999999999\"}", "seed"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":1,\"seed\":1}", "seed"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":1,\"seed\":\"1\"}", "width"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":\"x\",\"seed\":\"1\"}", "true_cfg_scale"},
        {"{\"prompt\":\"a\\u0000b\",\"true_cfg_scale\":1,\"seed\":\"1\",\"width\":16,\"height\":16,"
         "\"steps\":1,\"max_sequence_length\":1,\"format\":0,\"quality\":0}", "NUL"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":1,\"seed\":\"1\",\"width\":16,\"height\":16,"
         "\"steps\":1,\"max_sequence_length\":1,\"format\":3,\"quality\":0}", "format"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":1e300,\"seed\":\"1\",\"width\":16,\"height\":16,"
         "\"steps\":1,\"max_sequence_length\":1,\"format\":0,\"quality\":0}", "true_cfg_scale"},
        {"{\"prompt\":\"a\",\"true_cfg_scale\":1,\"seed\":\"1\",\"width\":16,\"height\":16,"
         "\"steps\":1,\"max_sequence_length\":2000,\"format\":0,\"quality\":0}", "max_sequence_length"},
        {"{\"prompt\":\"a\",\"prompt\":\"b\"}", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        gen_params_t p;
        char err[256] = "";
        if (gen_params_decode((const uint8_t *)bad[i].json, strlen(bad[i].json), &p, err,
                              sizeof err) != -1)
            fail_msg("case %zu accepted", i);
        if (!strstr(err, bad[i].why))
            fail_msg("case %zu: \"%s\" does not mention %s", i, err, bad[i].why);
        assert_null(p.prompt);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_encode_refuses_bad_fields),
        cmocka_unit_test(test_decode_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
