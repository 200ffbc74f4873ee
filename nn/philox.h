/* philox: the counter-based random numbers behind every seed (Philox4x32-10, Salmon et al.,
 * "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
 *
 * A seed must give the same image on every run and machine, on the CPU and on a GPU, so the
 * initial noise is a pure function of (seed, element index): element e of a sample's noise
 * (row-major over its (channels, height, width) latents) is lane e % 4 of the Philox block
 * with counter (b low 32 bits, b high 32 bits, 0, 0), b = e / 4, and key (seed low 32 bits,
 * seed high 32 bits), turned into a
 * normal by the Box-Muller transform: lanes (0, 1) give the normals of elements 4b and 4b+1,
 * lanes (2, 3) those of 4b+2 and 4b+3:
 *   u1 = (x0 + 1) / 2^32 (never 0), u2 = x1 / 2^32, r = sqrt(-2 ln u1),
 *   z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), computed in double and rounded to float. */
#ifndef DIFFUSIOND_NN_PHILOX_H
#define DIFFUSIOND_NN_PHILOX_H

#include <stdint.h>

/* One Philox4x32-10 block: out = philox(counter, key). */
void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* n standard normals for elements [first, first + n) of the stream of seed. */
void philox_normal(uint64_t seed, uint64_t first, uint64_t n, float *out);

#endif
