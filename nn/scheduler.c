/* scheduler: FlowMatchEulerDiscreteScheduler (see scheduler.h).
 * The reference works on numpy float32 arrays with Python floats mixed in; under numpy's
 * promotion rules (NEP 50) each Python float is rounded to float32 before the operation, and
 * every intermediate is float32. The code below spells that out step by step. */
#include "nn/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn/json_file.h"

void sched_config_defaults(sched_config_t *c)
{
    c->num_train_timesteps = 1000;
    c->shift = 1.0;
    c->use_dynamic_shifting = false;
    c->base_shift = 0.5;
    c->max_shift = 1.15;
    c->base_image_seq_len = 256;
    c->max_image_seq_len = 4096;
    c->shift_terminal = 0.0;
    c->time_shift_type = SCHED_SHIFT_EXPONENTIAL;
}

/* A number (int or real) or null; 1 if present, 0 if absent or null, -1 if of another type. */
static int json_number(json_t *obj, const char *key, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return 1;
}

static int json_flag(json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return -1;
    *out = json_is_true(v);
    return 1;
}

int sched_config_load(sched_config_t *c, const char *path, char *err, size_t errlen)
{
    sched_config_defaults(c);
    json_t *root = nn_json_load_object(path, err, errlen);
    if (!root)
        return -1;
    int rc = -1;
    const char *bad = NULL;
    double d;
    static const char *const unsupported[] = {"use_karras_sigmas", "use_exponential_sigmas",
                                              "use_beta_sigmas", "stochastic_sampling",
                                              "invert_sigmas"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        bool on = false;
        if (json_flag(root, unsupported[i], &on) < 0) {
            bad = unsupported[i];
            goto bad_key;
        }
        if (on) {
            snprintf(err, errlen, "%s: %s = true is not supported", path, unsupported[i]);
            goto out;
        }
    }
    int r;
#define NUMBER(key, lo, hi, assign)                                                              \
    if ((r = json_number(root, key, &d)) < 0 || (r > 0 && !(d >= (lo) && d <= (hi)))) {          \
        bad = key;                                                                               \
        goto bad_key;                                                                            \
    } else if (r > 0) {                                                                          \
        assign;                                                                                  \
    }
    NUMBER("num_train_timesteps", 1, 1e6, c->num_train_timesteps = (int)d);
    NUMBER("shift", 1e-6, 1e6, c->shift = d);
    NUMBER("base_shift", -100, 100, c->base_shift = d);
    NUMBER("max_shift", -100, 100, c->max_shift = d);
    NUMBER("base_image_seq_len", 1, 1e9, c->base_image_seq_len = (int64_t)d);
    NUMBER("max_image_seq_len", 1, 1e9, c->max_image_seq_len = (int64_t)d);
    NUMBER("shift_terminal", 0, 0.999999, c->shift_terminal = d);
#undef NUMBER
    if (json_flag(root, "use_dynamic_shifting", &c->use_dynamic_shifting) < 0) {
        bad = "use_dynamic_shifting";
        goto bad_key;
    }
    json_t *type = json_object_get(root, "time_shift_type");
    if (type && !json_is_null(type)) {
        const char *t = json_string_value(type);
        if (t && strcmp(t, "exponential") == 0)
            c->time_shift_type = SCHED_SHIFT_EXPONENTIAL;
        else if (t && strcmp(t, "linear") == 0)
            c->time_shift_type = SCHED_SHIFT_LINEAR;
        else {
            bad = "time_shift_type";
            goto bad_key;
        }
    }
    if (c->max_image_seq_len == c->base_image_seq_len && c->use_dynamic_shifting) {
        snprintf(err, errlen, "%s: max_image_seq_len equals base_image_seq_len", path);
        goto out;
    }
    rc = 0;
    goto out;
bad_key:
    snprintf(err, errlen, "%s: %s has a value of the wrong type or out of range", path, bad);
out:
    json_decref(root);
    return rc;
}

double sched_mu(const sched_config_t *c, int64_t image_seq_len)
{
    /* calculate_shift: m = (max_shift - base_shift) / (max_len - base_len); b = base_shift -
     * m * base_len; mu = seq * m + b, in Python floats. */
    double m = (c->max_shift - c->base_shift) /
               (double)(c->max_image_seq_len - c->base_image_seq_len);
    double b = c->base_shift - m * (double)c->base_image_seq_len;
    return (double)image_seq_len * m + b;
}

int sched_set_timesteps(const sched_config_t *c, int steps, double mu, float *sigmas,
                        float *timesteps)
{
    if (steps < 1)
        return -1;
    /* np.linspace(1.0, 1/steps, steps) in float64, then astype(float32). */
    double start = 1.0, stop = 1.0 / steps;
    for (int i = 0; i < steps; i++) {
        double v;
        if (steps == 1)
            v = start;
        else if (i == steps - 1)
            v = stop; /* linspace sets the endpoint exactly */
        else
            v = start + (double)i * ((stop - start) / (double)(steps - 1));
        sigmas[i] = (float)v;
    }
    if (c->use_dynamic_shifting) {
        float emu = (float)exp(mu);
        for (int i = 0; i < steps; i++) {
            float base = 1.0f / sigmas[i] - 1.0f; /* (1/t - 1) ** 1.0 */
            float num = c->time_shift_type == SCHED_SHIFT_EXPONENTIAL ? emu : (float)mu;
            sigmas[i] = num / (num + base);
        }
    } else {
        float shift = (float)c->shift, shift_1 = (float)(c->shift - 1.0);
        for (int i = 0; i < steps; i++)
            sigmas[i] = shift * sigmas[i] / (1.0f + shift_1 * sigmas[i]);
    }
    if (c->shift_terminal > 0) {
        float scale = (1.0f - sigmas[steps - 1]) / (float)(1.0 - c->shift_terminal);
        for (int i = 0; i < steps; i++)
            sigmas[i] = 1.0f - (1.0f - sigmas[i]) / scale;
    }
    for (int i = 0; i < steps; i++)
        timesteps[i] = sigmas[i] * (float)c->num_train_timesteps;
    sigmas[steps] = 0.0f;
    return 0;
}

void sched_euler_step(float *x, const float *v, int64_t n, float sigma, float sigma_next)
{
    float dt = sigma_next - sigma;
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] + dt * v[i];
}
