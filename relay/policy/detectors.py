"""Built-in value detectors: patterns for data that should not leave a customer's network.

Owns: each detector's regular expression and, where a regex alone over-matches, its
validation (IPv6 through `ipaddress`, card numbers through the Luhn check).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass


def _luhn(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Detector:
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self.pattern.finditer(text) if self.check is None or self.check(m.group(0))]


DETECTORS: dict[str, Detector] = {
    "ipv4": Detector(re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                                r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")),
    "ipv6": Detector(re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])"), _ipv6),
    "email": Detector(re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    # Three or more labels and a letter TLD: broker-1.kafka.example.com, not a bare word.
    "hostname": Detector(re.compile(
        r"(?<![\w.-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){2,}[A-Za-z]{2,63}(?![\w-])")),
    "url_credentials": Detector(re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)")),
    "aws_access_key": Detector(re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"
                                          r"(?![A-Z0-9])")),
    "jwt": Detector(re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}")),
    "pem_private_key": Detector(re.compile(
        r"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z ]+ )?PRIVATE KEY-----|$)")),
    "credit_card": Detector(re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"), _luhn),
}


def regex_detector(pattern: str) -> Detector:
    return Detector(re.compile(pattern))
