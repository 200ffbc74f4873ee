"""Prints Philox4x32-10 known-answer vectors from an independent implementation (randomgen's
Philox with number=4, width=32), the values tests/unit/test_qwen_image.c checks nn/philox.c
against. randomgen increments the counter before it generates, so each counter is stepped
back by one first.

    pip install randomgen==2.5.1 numpy && python tools/golden/philox_kat.py
"""
from randomgen import Philox


def pack(words):
    return sum(int(w) << (32 * i) for i, w in enumerate(words))


CASES = [
    ((0, 0, 0, 0), (0, 0)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)),
]

for ctr, key in CASES:
    gen = Philox(counter=(pack(ctr) - 1) % (1 << 128), key=pack(key), number=4, width=32)
    out = [int(x) for x in gen.random_raw(4)]
    print("ctr", [hex(c) for c in ctr], "key", [hex(k) for k in key], "->", [hex(o) for o in out])
