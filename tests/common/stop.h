/* stop: a model call's stop callback for tests (nn_ctx_t.stop) that answers "go on" a given
 * number of times, then "stop", and counts how often it was asked. Test code only. */
#ifndef DIFFUSIOND_TESTS_STOP_H
#define DIFFUSIOND_TESTS_STOP_H

#include <stdbool.h>

typedef struct {
    int asked; /* calls so far */
    int left;  /* "go on" answers left; then "stop" */
} test_stop_t;

static inline bool test_stop_after(void *user)
{
    test_stop_t *s = user;
    s->asked++;
    return s->left-- <= 0;
}

#endif
