/* json_file: reading a model's JSON files (config.json, scheduler_config.json, safetensors
 * index files) with one error format: "FILE:LINE: what", or "FILE: not a JSON object". */
#ifndef DIFFUSIOND_NN_JSON_FILE_H
#define DIFFUSIOND_NN_JSON_FILE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The file's top-level object (duplicate keys refused), or NULL with the reason in err. The
 * caller json_decref()s it. */
json_t *nn_json_load_object(const char *path, char *err, size_t errlen);

/* obj[key] into *out when it is an integer in lo..hi. Absent or null: an error when required,
 * otherwise 0 with *out unchanged (the caller's default). Errors name path and key. */
int nn_json_int(json_t *obj, const char *key, int lo, int hi, int *out, bool required,
                const char *path, char *err, size_t errlen);

#endif
