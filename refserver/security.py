"""Personal data: validation and keyed hashes (NIK and email are never stored in clear)."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date

__all__ = ["keyed_hash", "nik_problem", "email_problem", "mask", "ascii_digits"]

EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")


def keyed_hash(secret: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of a normalized value, for look-ups without keeping the value."""
    return hmac.new(secret, f"{kind}:{value.strip().lower()}".encode(), hashlib.sha256).hexdigest()


def email_problem(email: object) -> str | None:
    if not isinstance(email, str) or len(email) > 254 or not EMAIL.match(email):
        return "email must be an address like name@example.org"
    return None


def nik_problem(nik: object, birth_date: date) -> str | None:
    """A NIK is 16 digits: region (6), birth day (+40 for women), month, 2-digit year, serial (4).

    Its region code must be well formed and its birth date must agree with the one given.
    """
    if not isinstance(nik, str) or len(nik) != 16 or not ascii_digits(nik):
        return "nik must be 16 digits (0-9)"
    province, day, month, year, serial = int(nik[0:2]), int(nik[6:8]), int(nik[8:10]), int(nik[10:12]), nik[12:]
    if not 11 <= province <= 94 or nik[2:6] == "0000":
        return "nik has no valid region code (digits 1-6)"
    if day > 40:
        day -= 40
    if (day, month, year) != (birth_date.day, birth_date.month, birth_date.year % 100):
        return "nik's birth date (digits 7-12) does not match birth_date"
    if serial == "0000":
        return "nik has no valid serial number (digits 13-16)"
    return None


def ascii_digits(text: str) -> bool:
    """Only the digits 0-9: ``str.isdigit`` also takes other scripts' digits (Arabic-Indic, fullwidth, superscript),
    which would let one NIK register again under another spelling."""
    return text.isascii() and text.isdigit()


def mask(value: str) -> str:
    """What may appear in a log: the first two characters and a length."""
    return f"{value[:2]}…({len(value)})"
