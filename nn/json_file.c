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
