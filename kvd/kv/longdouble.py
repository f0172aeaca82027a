# -*- test-case-name: tests.kv.test_hashes -*-
"""
HINCRBYFLOAT's arithmetic, exactly as Redis 7 on x86-64 does it: the x87
80-bit ``long double`` (64-bit significand, exponents down to the
subnormal 2**-16445), parsed as glibc's ``strtold`` parses (Redis's
``string2ld``), added with one rounding to nearest-even, and printed as
Redis's ``ld2string(..., LD_STR_HUMAN)``: ``%.17Lf`` with the trailing
zeros (and a bare point) removed, ``-0`` as ``0``.

Emulated with Python integers rather than called through the C library, so
that every replica computes the same bytes whatever its machine (an
aarch64 ``long double`` is 128 bits) and the machine stays pure.

A value is an exact rational ``(num, den)`` with ``den`` a power of two.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

_PRECISION = 64
#: The exponent of the least subnormal: 2**-16445.
_MIN_EXP = -16382 - (_PRECISION - 1)
#: Every finite value is below 2**16384.
_MAX_BITS = 16384
#: Redis's MAX_LONG_DOUBLE_CHARS: string2ld refuses inputs this long or longer.
MAX_CHARS = 5 * 1024

_DEC = re.compile(rb"([+-]?)(?:(\d+)\.?(\d*)|\.(\d+))(?:[eE]([+-]?\d+))?\Z")
_HEX = re.compile(rb"([+-]?)0[xX](?:([0-9a-fA-F]+)\.?([0-9a-fA-F]*)|\.([0-9a-fA-F]+))(?:[pP]([+-]?\d+))?\Z")
_INF = re.compile(rb"[+-]?(?:inf|infinity)\Z", re.IGNORECASE)
_SPACE = b" \t\n\v\f\r"

Value = Tuple[int, int]  # (numerator, denominator: a power of two)


def _int(digits: bytes, base: int = 10) -> int:
    """int(digits) without Python's limit on the length of decimal strings."""
    value = 0
    for i in range(0, len(digits), 1000):
        chunk = digits[i:i + 1000]
        value = value * base ** len(chunk) + int(chunk, base)
    return value


def _round(num: int, den: int) -> Optional[Value]:
    """``num/den`` (den > 0) rounded to the nearest long double, ties to even; None past the largest (inf)."""
    if num == 0:
        return 0, 1
    sign = -1 if num < 0 else 1
    num = abs(num)
    k = num.bit_length() - den.bit_length()  # floor(log2(num/den)) is k or k - 1
    if (num << -k if k < 0 else num) < (den << k if k > 0 else den):
        k -= 1
    e = max(k - (_PRECISION - 1), _MIN_EXP)
    if e >= 0:
        q, r = divmod(num, den << e)
        half = den << e
    else:
        q, r = divmod(num << -e, den)
        half = den
    if 2 * r > half or (2 * r == half and q & 1):
        q += 1
    if q.bit_length() + e > _MAX_BITS:
        return None
    if e >= 0:
        return sign * (q << e), 1
    return sign * q, 1 << -e


def parse(data: bytes) -> Optional[Value]:
    """Redis's ``string2ld``: the long double ``data`` spells, or None (refused: also infinities' overflow)."""
    if not 0 < len(data) < MAX_CHARS:
        return None
    if data[0] in _SPACE:  # (a NUL inside fails the match below: string2ld wants every byte read)
        return None
    if _INF.match(data):
        return None  # Redis refuses HUGE_VAL, and an increment of inf anyway
    m = _DEC.match(data)
    if m is not None:
        sign, whole, frac, only_frac, exp = m.groups()
        digits = (whole + frac) if whole is not None else only_frac
        scale = -len(frac if whole is not None else only_frac)
        base, radix_log = 10, None
    else:
        m = _HEX.match(data)
        if m is None:
            return None
        sign, whole, frac, only_frac, exp = m.groups()
        digits = (whole + frac) if whole is not None else only_frac
        scale = -4 * len(frac if whole is not None else only_frac)
        base, radix_log = 16, 2
    digits = digits.lstrip(b"0")
    if not digits:
        return 0, 1
    exp_text = (exp or b"0").lstrip(b"+")
    negative_exp = exp_text.startswith(b"-")
    exp_digits = exp_text.lstrip(b"-").lstrip(b"0") or b"0"
    if len(exp_digits) > 7:
        return None if not negative_exp else None  # overflow (inf) or underflow to zero: both refused
    exponent = int(exp_digits) * (-1 if negative_exp else 1) + scale
    mantissa = _int(digits, base)
    if radix_log is None:
        magnitude = len(digits) + exponent  # the value is below 10**magnitude and at least 10**(magnitude - 1)
        if magnitude > 4940 or magnitude < -4960:
            return None
        if exponent >= 0:
            num, den = mantissa * 10 ** exponent, 1
        else:
            num, den = mantissa, 10 ** -exponent
    else:
        bits = mantissa.bit_length() + exponent
        if bits > _MAX_BITS + 1 or bits < _MIN_EXP - 2:
            return None
        num, den = (mantissa << exponent, 1) if exponent >= 0 else (mantissa, 1 << -exponent)
    value = _round(-num if sign == b"-" else num, den)
    if value is None or value[0] == 0:  # ERANGE: overflow, or a non-zero input rounding to zero
        return None
    return value


def is_infinity(data: bytes) -> bool:
    """Whether ``data`` spells an infinity strtold reads without ERANGE ("inf", "-Infinity" ...)."""
    return bool(_INF.match(data))


def add(a: Value, b: Value) -> Optional[Value]:
    """``a + b`` rounded once, or None if it overflows (Redis: "increment would produce NaN or Infinity")."""
    den = max(a[1], b[1])
    return _round(a[0] * (den // a[1]) + b[0] * (den // b[1]), den)


def _decimal(n: int) -> bytes:
    """str(n) for a non-negative int of any length."""
    if n < 10 ** 1000:
        return b"%d" % n
    chunk = 10 ** 1000
    parts = []
    while n:
        n, low = divmod(n, chunk)
        parts.append(low)
    out = b"%d" % parts[-1]
    return out + b"".join(b"%01000d" % p for p in reversed(parts[:-1]))


def format_human(value: Value) -> bytes:
    """Redis's ``ld2string(LD_STR_HUMAN)``: ``%.17Lf`` without trailing zeros; ``-0`` is ``0``."""
    num, den = value
    negative = num < 0
    q, r = divmod(abs(num) * 10 ** 17, den)
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
    whole, frac = divmod(q, 10 ** 17)
    text = _decimal(whole) + b"." + b"%017d" % frac
    text = text.rstrip(b"0").rstrip(b".")
    if negative and text != b"0":
        text = b"-" + text
    return text
