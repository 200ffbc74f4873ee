/* json_file: loading a JSON object from a file with a message that names it (see the header). */
#include "nn/json_file.h"

#include <stdio.h>

json_t *nn_json_load_object(const char *path, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "%s:%d: %s", path, jerr.line, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        json_decref(root);
        return NULL;
    }
    return root;
}

int nn_json_int(json_t *obj, const char *key, int lo, int hi, int *out, bool required,
                const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (!required)
            return 0;
        snprintf(err, errlen, "%s: missing %s", path, key);
        return -1;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(err, errlen, "%s: %s must be an integer in %d..%d", path, key, lo, hi);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}
