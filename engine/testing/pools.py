"""A task for checking a pool (``engine.pools``): in the library, because a Ray worker imports a
task's module by name and a test module is not importable there."""

from __future__ import annotations

from engine.pools import Say


def square(shared: int, item: int, say: Say) -> int:
    """``shared * item**2``; says which item it got; a negative item raises ``ValueError``."""
    say(f"item {item}")
    if item < 0:
        raise ValueError(f"negative item {item}")
    return shared * item * item
