/* json_file: reading a model's JSON files (config.json, scheduler_config.json, safetensors
 * index files) with one error format: "FILE:LINE: what", or "FILE: not a JSON object". */
#ifndef DIFFUSIOND_NN_JSON_FILE_H
#define DIFFUSIOND_NN_JSON_FILE_H

#include <jansson.h>
#include <stddef.h>

/* The file's top-level object (duplicate keys refused), or NULL with the reason in err. The
 * caller json_decref()s it. */
json_t *nn_json_load_object(const char *path, char *err, size_t errlen);

#endif
