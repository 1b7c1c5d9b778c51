"""EAN-13: check digit and bar pattern (the generator draws its own symbols; zxing-cpp reads them)."""

from __future__ import annotations

import numpy as np

_L = (
    "0001101",
    "0011001",
    "0010011",
    "0111101",
    "0100011",
    "0110001",
    "0101111",
    "0111011",
    "0110111",
    "0001011",
)
_G = tuple("".join("1" if c == "0" else "0" for c in code)[::-1] for code in _L)
_R = tuple("".join("1" if c == "0" else "0" for c in code) for code in _L)
_PARITY = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG", "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")

# Guard bars run longer than data bars; these module indices are guards.
GUARD_MODULES = frozenset([0, 2, 46, 48, 92, 94])


def check_digit(first12: str) -> int:
    """The EAN-13 check digit of 12 digits (weights 1, 3 alternating from the left)."""
    if len(first12) != 12 or not first12.isdigit():
        raise ValueError(f"EAN-13 needs 12 digits before the check digit, got {first12!r}")
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return (10 - total % 10) % 10


def make_ean13(rng: np.random.Generator, prefix: str = "") -> str:
    """A random valid EAN-13 (GS1 prefix 400-440 or 690-699 style, like a real supplier's)."""
    body = prefix or rng.choice(["400", "401", "690", "693", "880", "890", "893", "500"])
    body += "".join(str(d) for d in rng.integers(0, 10, 12 - len(body)))
    return body + str(check_digit(body))


def modules(code: str) -> np.ndarray:
    """The 95 modules (1 = bar) of a 13-digit EAN-13 code."""
    if len(code) != 13 or not code.isdigit() or check_digit(code[:12]) != int(code[12]):
        raise ValueError(f"{code!r} is not a valid EAN-13 (13 digits with a correct check digit)")
    parity = _PARITY[int(code[0])]
    bits = "101"
    for d, p in zip(code[1:7], parity, strict=True):
        bits += (_L if p == "L" else _G)[int(d)]
    bits += "01010"
    for d in code[7:]:
        bits += _R[int(d)]
    bits += "101"
    return np.frombuffer(bits.encode(), np.uint8) - ord("0")
