"""Unique ids for the hot paths (events, messages, decisions, executions).

Why not ``uuid.uuid4()``: it reads the kernel's random source on every call, and on this class of
virtual machine one ``getrandom`` costs ~90 µs while holding the GIL; the engine makes several ids
per anomaly, which showed up as ~10% of the deciding thread's time under load. These ids only have
to be unique (nobody authenticates with them), so a Mersenne Twister seeded once from the kernel per
process gives the same 128 bits of collision resistance at a fraction of the cost.
"""

from __future__ import annotations

import os
import random

_rng = random.Random(os.urandom(32))


def hex_id(bits: int = 128) -> str:
    """A random id of ``bits`` bits as lowercase hex (32 characters for the default 128)."""
    return f"{_rng.getrandbits(bits):0{bits // 4}x}"
