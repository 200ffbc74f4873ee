/* fuzz_http_request: the body of POST /v1/images/generations through the ingress's request
 * validation (pipeline/gen_request.c): any bytes give a checked request or an error with a
 * message, never a crash; a request that passes encodes into job params that decode back. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/gen_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const gen_request_limits_t lim = {
        .prompt_max = 8192, .pixels_max = 4194304, .steps_max = 100, .n_max = 10,
        .model = size % 2 ? "qwen-image" : NULL,
    };
    gen_request_t req;
    gen_request_error_t err;
    if (gen_request_parse((const char *)data, size, &lim, &req, &err) != 0) {
        if (err.message[0] == '\0' || err.code == NULL)
            abort(); /* every refusal says why */
        return 0;
    }
    if (req.n < 1 || req.n > 10 || (int64_t)req.params.width * req.params.height > 4194304)
        abort();
    char *params = NULL, e[256];
    size_t len = 0;
    if (gen_params_encode(&req.params, &params, &len, e, sizeof e) != 0)
        abort(); /* what validation passed, the job contract must take */
    gen_params_t back;
    if (gen_params_decode((const uint8_t *)params, len, &back, e, sizeof e) != 0)
        abort();
    if (back.width != req.params.width || back.seed != req.params.seed ||
        strcmp(back.prompt, req.params.prompt) != 0)
        abort();
    gen_params_free(&back);
    free(params);
    gen_request_free(&req);
    return 0;
}
