/* philox: Philox4x32-10 and the normals derived from it (see philox.h). */
#include "nn/philox.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* the golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Two normals from two 32-bit words (Box-Muller). */
static void box_muller(uint32_t a, uint32_t b, float *z0, float *z1)
{
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = ((double)a + 1.0) / 4294967296.0; /* (0, 1]: log never sees 0 */
    double u2 = (double)b / 4294967296.0;
    double r = sqrt(-2.0 * log(u1));
    *z0 = (float)(r * cos(two_pi * u2));
    *z1 = (float)(r * sin(two_pi * u2));
}

void philox_normal(uint64_t seed, uint64_t first, uint64_t n, float *out)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint64_t e = first, end = first + n;
    while (e < end) {
        uint64_t block = e / 4;
        uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0}, x[4];
        philox4x32_10(ctr, key, x);
        float z[4];
        box_muller(x[0], x[1], &z[0], &z[1]);
        box_muller(x[2], x[3], &z[2], &z[3]);
        for (unsigned lane = (unsigned)(e % 4); lane < 4 && e < end; lane++, e++)
            out[e - first] = z[lane];
    }
}
