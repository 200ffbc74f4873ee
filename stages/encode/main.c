/* diffusiond-encode: the output encoder. Turns the VAE's 8-bit pixels into the requested file
 * (PNG, JPEG or WebP, codec/image_codec.h: the same code diffusiond-generate writes with) and
 * attaches the file's bytes for the origin (pipeline/gen_job.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/image_codec.h"
#include "ipc/log.h"
#include "ipc/stage.h"
#include "pipeline/model_stage.h"

static int encode_compute(void *model, gen_task_t *t)
{
    (void)model;
    const proto_tensor_ref_t *r = &t->in_ref[GEN_T_PIXELS];
    const gen_params_t *gp = &t->params;
    if (r->dtype != PROTO_DTYPE_U8 || r->ndim != 3 || r->shape[2] != 3 ||
        r->shape[0] != gp->height || r->shape[1] != gp->width)
        return gen_task_fail(t, 500, "encode: pixels of the wrong shape for %dx%d", gp->width,
                             gp->height);
    static const image_format_t formats[] = {[GEN_FORMAT_PNG] = IMAGE_PNG,
                                             [GEN_FORMAT_JPEG] = IMAGE_JPEG,
                                             [GEN_FORMAT_WEBP] = IMAGE_WEBP};
    uint8_t *file;
    size_t len;
    char err[256];
    if (image_encode(formats[gp->format], t->in[GEN_T_PIXELS], gp->width, gp->height,
                     gp->quality, &file, &len, err, sizeof err) != 0)
        return gen_task_fail(t, 500, "encode: %s", err);
    int64_t shape[1] = {(int64_t)len};
    uint8_t *out = gen_output_alloc(t, PROTO_DTYPE_U8, 1, shape);
    if (!out) {
        free(file);
        return gen_task_fail(t, 503, "encode: out of memory");
    }
    memcpy(out, file, len);
    free(file);
    return 0;
}

static int encode_init(stage_t *st, model_stage_spec_t *spec)
{
    (void)st;
    *spec = (model_stage_spec_t){.what = "encode", .min_inputs = 1, .max_inputs = 1,
                                 .compute = encode_compute};
    return 0;
}

int main(int argc, char **argv)
{
    static const model_stage_def_t def = {.init = encode_init};
    return model_stage_main(argc, argv, &def);
}
