/* qwen_image_vae: Qwen-Image's VAE (diffusers' AutoencoderKLQwenImage, the Wan-2.1 video VAE
 * fine-tuned for images): the decoder that turns the denoised latents into an image, and the
 * encoder that turns an input image into latents (the edit pipelines' condition), on an nn
 * backend.
 *
 * Images run as one frame. The model is built from causal 3D convolutions that, for a video,
 * see the two previous frames through a feature cache; the first frame's cache is empty,
 * which the reference fills with zero frames, so every 3x3x3 convolution of a single image is
 * the 2D convolution with its last temporal slice (kernel[:, :, 2]) plus bias, the resample
 * blocks' time_conv is skipped, and T stays 1. That is what runs here (qwen_image_vae.c,
 * vae_causal_conv, says where the cached frames of a video would enter). Activations are
 * pixel-major (NHWC) inside; the API takes and gives channel-planar arrays, as torch does.
 *
 * Memory: the activations live in three buffers of the largest (channels x pixels) the
 * network reaches (96 x 1024 x 1024 floats for a 1024x1024 decode) plus the attention's q, k
 * and v, reused block after block: the upsampled images are never materialised (the
 * convolution reads each input pixel for its 2x2 block). A 1024x1024 decode with the real
 * widths peaks at 1.3 GiB resident, the decoder's weights included (tools/bench/bench_vae).
 * Larger images are decoded in overlapping tiles blended as the reference's tiled_decode
 * blends them (qwen_vae_tiling_t). */
#ifndef DIFFUSIOND_NN_QWEN_IMAGE_VAE_H
#define DIFFUSIOND_NN_QWEN_IMAGE_VAE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/ops.h"

#define QWEN_VAE_MAX_LEVELS 6   /* len(dim_mult) */
#define QWEN_VAE_MAX_Z 64       /* z_dim */
#define QWEN_VAE_MAX_SIDE 16384 /* pixels per side of an image */

/* vae/config.json */
typedef struct {
    int base_dim;                                /* 96 */
    int z_dim;                                   /* 16: latent channels */
    int levels;                                  /* len(dim_mult): 4 */
    int dim_mult[QWEN_VAE_MAX_LEVELS];           /* 1, 2, 4, 4 */
    int num_res_blocks;                          /* 2 */
    bool temporal_down[QWEN_VAE_MAX_LEVELS - 1]; /* temperal_downsample: F, T, T */
    int input_channels;                          /* 3 */
    float latents_mean[QWEN_VAE_MAX_Z];          /* per latent channel */
    float latents_std[QWEN_VAE_MAX_Z];
    int spatial_factor;                          /* derived: 2^(levels - 1) = 8 */
} qwen_vae_config_t;

/* Parses config.json (the keys above; dropout is ignored, inference has none). Options this
 * port does not implement (attention at other scales: attn_scales not empty) and configs of
 * another class (_class_name) are errors that name them. */
int qwen_vae_config_load(qwen_vae_config_t *c, const char *path, char *err, size_t errlen);

/* Which halves to load: the text-to-image pipeline needs only the decoder. */
enum { QWEN_VAE_DECODER = 1, QWEN_VAE_ENCODER = 2, QWEN_VAE_BOTH = 3 };

typedef struct qwen_vae qwen_vae_t;

/* Loads config.json and diffusion_pytorch_model.safetensors of a vae folder, the parts asked
 * for. The checkpoint is checked whole: every tensor of the config must be there with its
 * shape (errors name the tensor, the file and both shapes), and a tensor the config does not
 * have is an error. Only the last temporal slice of the 3x3x3 kernels is kept, packed for
 * the backend's convolution; time_conv weights are checked and not kept. */
qwen_vae_t *qwen_vae_load(const char *folder, nn_ctx_t *ctx, int parts, char *err,
                          size_t errlen);
void qwen_vae_free(qwen_vae_t **vae);
const qwen_vae_config_t *qwen_vae_config(const qwen_vae_t *vae);
size_t qwen_vae_weight_bytes(const qwen_vae_t *vae);
/* Bytes of activation memory the VAE holds now (kept between calls, grown to the largest). */
size_t qwen_vae_activation_bytes(const qwen_vae_t *vae);

/* Latent size of an image: the encoder's output for height x width pixels (each downsample
 * maps n to floor((n - 2) / 2) + 1, n / 2 for even n). -1 when the image is too small to
 * reach the last level (or larger than QWEN_VAE_MAX_SIDE). */
int qwen_vae_latent_size(const qwen_vae_config_t *c, int height, int width, int *h, int *w);

/* Intermediate activations, for localising a mismatch against the reference: fn is called
 * with the reference's module name ("decoder.conv_in", "decoder.mid_block",
 * "decoder.up_blocks.2", "decoder" (before the clamp), "encoder.down_blocks.3", "quant_conv",
 * ... see qwen_image_vae.c) and the activation, pixel-major: x[(y * width + x) * channels + c]
 * in host memory. */
typedef struct {
    void (*fn)(void *user, const char *name, const float *x, int64_t channels, int64_t height,
               int64_t width);
    void *user;
} qwen_vae_trace_t;

/* When and how to decode in tiles. The reference decodes whole unless tiling is enabled, and
 * then tiles every image larger than one tile; here an image is decoded whole up to
 * max_pixels (output height x width) and in tiles beyond, the tiles laid out and blended
 * exactly as AutoencoderKLQwenImage.tiled_decode with enable_tiling(tile_height, tile_width,
 * stride_height, stride_width). Tile sizes and strides are in output pixels, multiples of the
 * spatial factor, stride <= tile. */
typedef struct {
    int64_t max_pixels;              /* 0: always whole */
    int tile_height, tile_width;     /* tile_sample_min_height / _width */
    int stride_height, stride_width; /* tile_sample_stride_height / _width */
} qwen_vae_tiling_t;

/* Whole up to 2048x1024 pixels (every Qwen-Image aspect preset, 1328x1328 included, decodes
 * whole and equal to the untiled reference; a 2048x2048 image goes in tiles); the reference's
 * tile size 256 and stride 192. */
void qwen_vae_tiling_default(qwen_vae_tiling_t *t);

/* Decodes de-normalised latents z [z_dim, frames, h, w] (what the pipeline hands vae.decode:
 * qwen_vae_denormalize's output) into image [3, frames, 8h, 8w] (spatial_factor x), values in
 * [-1, 1]: post_quant_conv, the decoder, the clamp. Tiled decodes return the reference's
 * tiled_decode result, which is not clamped (the pipeline's postprocess clamps either way).
 * frames must be 1: video decoding (frames > 1) is not implemented. tiling NULL: the
 * defaults. Returns 0, or -1 with err (bad sizes, no memory, or "stopped" when the context's
 * stop said so between blocks: nn_ctx_t.stop). One caller at a time per VAE; needs the
 * decoder loaded. */
int qwen_vae_decode(qwen_vae_t *vae, const float *z, int frames, int h, int w,
                    const qwen_vae_tiling_t *tiling, float *image,
                    const qwen_vae_trace_t *trace, char *err, size_t errlen);

/* Encodes image [3, frames, height, width] with values in [-1, 1] (qwen_vae_preprocess_rgb8)
 * into the posterior mean [z_dim, frames, h, w] (qwen_vae_latent_size), which the edit
 * pipelines use (retrieve_latents with sample_mode "argmax"); normalise it with
 * qwen_vae_normalize before the transformer. frames must be 1. Returns 0, or -1 with err
 * ("stopped" as for decode). Needs the encoder loaded. */
int qwen_vae_encode(qwen_vae_t *vae, const float *image, int frames, int height, int width,
                    float *mean, const qwen_vae_trace_t *trace, char *err, size_t errlen);

/* The pipelines' latent scaling, per channel of x [z_dim, hw], in place, rounded as the
 * reference rounds it in float32:
 *   denormalize (before decode, QwenImagePipeline): x / (1 / std) + mean
 *   normalize (after encode, QwenImageEditPipeline._encode_vae_image): (x - mean) / std */
void qwen_vae_denormalize(const qwen_vae_t *vae, float *x, int64_t hw);
void qwen_vae_normalize(const qwen_vae_t *vae, float *x, int64_t hw);

/* From a decoded image [3, height, width] in [-1, 1] to what the pipeline returns
 * (VaeImageProcessor.postprocess): rgb [height, width, 3] = clamp(x * 0.5 + 0.5, 0, 1)
 * (output_type "np"; the product and the sum rounded apart, as torch's `images * 0.5 + 0.5`),
 * and rgb8 [height, width, 3] = round(that * 255) with the product rounded to float and ties
 * to even (numpy_to_pil: `(images * 255).round().astype("uint8")`, numpy's round is
 * half-to-even). Either output may be NULL. */
void qwen_vae_postprocess(const float *image, int height, int width, float *rgb,
                          uint8_t *rgb8);

/* From 8-bit RGB rgb8 [height, width, 3] to the encoder's input image [3, height, width]
 * (VaeImageProcessor.preprocess without resizing: pil_to_numpy's v / 255 in float32, then
 * normalize's 2 v - 1). */
void qwen_vae_preprocess_rgb8(const uint8_t *rgb8, int height, int width, float *image);

#endif
