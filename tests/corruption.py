"""How storage damages a file, for the reliability tests and benchmarks/reliability.py: seeded, so every run
corrupts the same bytes."""

import random

KINDS = ("bit flips", "garbled run", "zeroed sector", "truncated")


def corrupt(data: bytes, rng: random.Random, kind: str) -> bytes:
    """A copy of `data` damaged one way: 1-8 flipped bits (a rotting cell), 16 random bytes (a bad write),
    a 512-byte sector of zeros (a lost SD-card block) or a cut-off tail (a copy that stopped)."""
    b = bytearray(data)
    if kind == "bit flips":
        for bit in rng.sample(range(len(b) * 8), rng.randint(1, 8)):
            b[bit // 8] ^= 1 << (bit % 8)
    elif kind == "garbled run":
        at = rng.randrange(len(b) - 16)
        b[at : at + 16] = bytes(v ^ rng.randrange(1, 256) for v in b[at : at + 16])  # every byte changes
    elif kind == "zeroed sector":
        sectors = [s for s in range(0, len(b), 512) if any(b[s : s + 512])]  # zeroing zeros changes nothing
        at = rng.choice(sectors)
        b[at : at + 512] = bytes(len(b[at : at + 512]))
    else:
        b = b[: rng.randrange(len(b))]
    assert bytes(b) != data
    return bytes(b)


def corruptions(data: bytes, count: int, seed: int):
    """`count` corrupted copies, the kinds in turn: yields (kind, bytes)."""
    rng = random.Random(seed)
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        yield kind, corrupt(data, rng, kind)
