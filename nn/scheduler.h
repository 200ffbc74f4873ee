/* scheduler: the flow-matching Euler scheduler of the Qwen-Image pipelines, as diffusers'
 * FlowMatchEulerDiscreteScheduler computes it from a scheduler_config.json (set_timesteps
 * with the pipeline's sigmas and mu, and step()), float for float. */
#ifndef DIFFUSIOND_NN_SCHEDULER_H
#define DIFFUSIOND_NN_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { SCHED_SHIFT_EXPONENTIAL, SCHED_SHIFT_LINEAR } sched_shift_type_t;

typedef struct {
    int num_train_timesteps;     /* 1000 */
    double shift;                /* 1.0: the plain shift, used without dynamic shifting */
    bool use_dynamic_shifting;   /* false */
    double base_shift;           /* 0.5 */
    double max_shift;            /* 1.15 */
    int64_t base_image_seq_len;  /* 256 */
    int64_t max_image_seq_len;   /* 4096 */
    double shift_terminal;       /* 0: none */
    sched_shift_type_t time_shift_type; /* exponential */
} sched_config_t;

/* diffusers' defaults (and the pipeline's defaults for the keys only it reads). */
void sched_config_defaults(sched_config_t *c);
/* Reads scheduler_config.json. Keys that would change the math in ways not implemented
 * (karras/exponential/beta sigmas, stochastic sampling, inverted sigmas) are an error. */
int sched_config_load(sched_config_t *c, const char *path, char *err, size_t errlen);

/* The pipeline's calculate_shift: mu for an image of image_seq_len tokens (in double, as
 * Python computes it). */
double sched_mu(const sched_config_t *c, int64_t image_seq_len);

/* set_timesteps(sigmas=linspace(1, 1/steps, steps), mu): sigmas [steps + 1] (the last is 0)
 * and timesteps [steps] (sigma * num_train_timesteps), all float32 as the reference rounds.
 * Returns 0, or -1 for steps < 1. */
int sched_set_timesteps(const sched_config_t *c, int steps, double mu, float *sigmas,
                        float *timesteps);

/* The Euler step in place: x = x + (sigma_next - sigma) * v, in float32. */
void sched_euler_step(float *x, const float *v, int64_t n, float sigma, float sigma_next);

#endif
