/* auth: optional bearer tokens ([server] http_api_keys and http_api_key_file). Tokens are kept
 * as BLAKE2b digests and a presented token is hashed and compared with every one of them with
 * sodium_memcmp, so that neither the comparison nor the tokens' lengths leak through timing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sodium.h>

#include "ingress.h"

#define AUTH_MAX_KEYS 256
#define AUTH_MAX_TOKEN 512

static int auth_add(ingress_t *in, const char *tok, size_t len, char *err, size_t errlen)
{
    if (len == 0)
        return 0;
    if (len > AUTH_MAX_TOKEN || in->n_keys >= AUTH_MAX_KEYS) {
        snprintf(err, errlen, "http_api_keys: at most %d tokens of at most %d characters",
                 AUTH_MAX_KEYS, AUTH_MAX_TOKEN);
        return -1;
    }
    uint8_t (*k)[32] = realloc(in->keys, (in->n_keys + 1) * sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    in->keys = k;
    crypto_generichash(in->keys[in->n_keys++], 32, (const unsigned char *)tok, len, NULL, 0);
    return 0;
}

/* Tokens separated by spaces, tabs or newlines. */
static int auth_add_words(ingress_t *in, const char *text, char *err, size_t errlen)
{
    const char *s = text;
    while (*s) {
        s += strspn(s, " \t\r\n");
        size_t len = strcspn(s, " \t\r\n");
        if (auth_add(in, s, len, err, errlen) != 0)
            return -1;
        s += len;
    }
    return 0;
}

int auth_load(ingress_t *in, char *err, size_t errlen)
{
    if (auth_add_words(in, in->cfg->http_api_keys, err, errlen) != 0)
        return -1;
    const char *path = in->cfg->http_api_key_file;
    if (!path[0])
        return 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "http_api_key_file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[AUTH_MAX_TOKEN + 2];
    int rc = 0;
    size_t before = in->n_keys;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, errlen, "http_api_key_file %s: a line longer than %d characters",
                     path, AUTH_MAX_TOKEN);
            rc = -1;
        } else if (line[0] != '#') {
            rc = auth_add_words(in, line, err, errlen);
        }
    }
    fclose(f);
    if (rc == 0 && in->n_keys == before) {
        /* An empty key file would silently turn authentication off. */
        snprintf(err, errlen, "http_api_key_file %s holds no token", path);
        rc = -1;
    }
    return rc;
}

void auth_free(ingress_t *in)
{
    if (in->keys)
        sodium_memzero(in->keys, in->n_keys * sizeof *in->keys);
    free(in->keys);
    in->keys = NULL;
    in->n_keys = 0;
}

bool auth_check(const ingress_t *in, struct evhttp_request *hreq)
{
    if (in->n_keys == 0)
        return true;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(hreq), "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    const char *tok = h + 7;
    tok += strspn(tok, " ");
    uint8_t digest[32];
    crypto_generichash(digest, sizeof digest, (const unsigned char *)tok, strlen(tok), NULL, 0);
    int match = 0;
    for (size_t i = 0; i < in->n_keys; i++) /* no early exit: every key is compared */
        match |= sodium_memcmp(digest, in->keys[i], sizeof digest) == 0;
    return match != 0;
}
