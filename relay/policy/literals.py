"""The literal texts a value rule's pattern cannot match without: a cheap test before the regex.

Owns: reading a compiled pattern's syntax tree (the standard library's own parser) for a set
of strings of which every match, with what its lookarounds see, contains one. A text holding
none of them cannot match, so the regex need not run over it: most log bodies hold no
`clientId=`, no `/home/`, no `eyJ`. Where the tree says nothing certain (a character class
first, case-insensitive flags, a group that may match empty) the answer is None: run the regex.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

_c: Any = None
_parser: Any = None
try:  # the standard library's own regex parser; private, so read defensively
    _c = importlib.import_module("re._constants")
    _parser = importlib.import_module("re._parser")
except ImportError:  # another Python's internals: no shortcut, every pattern runs
    pass

Needs = frozenset[str] | None


@functools.lru_cache(maxsize=1024)
def required(pattern: re.Pattern[str]) -> Needs:
    """Strings of which every match of `pattern` (and what its lookarounds see) contains one; None: unknown."""
    if _parser is None or pattern.flags & re.IGNORECASE:
        return None
    try:
        tree = _parser.parse(pattern.pattern, pattern.flags)
    except (re.error, RecursionError):
        return None
    if tree.state.flags & re.IGNORECASE:
        return None
    return _sequence(list(tree))


def _sequence(items: list[tuple[Any, Any]]) -> Needs:
    """Every item of a sequence matches, so any one's needs are the sequence's: the strongest."""
    best: Needs = None
    run = ""
    for op, av in [*items, (None, None)]:
        if op is _c.LITERAL:
            run += chr(av)
            continue
        if run:
            best = _stronger(best, frozenset([run]))
            run = ""
        if op is not None:
            best = _stronger(best, _item(op, av))
    return best


def _item(op: Any, av: Any) -> Needs:
    if op is _c.SUBPATTERN:
        _, add_flags, _, sub = av
        return None if add_flags & re.IGNORECASE else _sequence(list(sub))
    if op is _c.BRANCH:
        alternatives = [_sequence(list(alt)) for alt in av[1]]
        if any(a is None for a in alternatives):
            return None
        return frozenset().union(*alternatives)  # type: ignore[arg-type]
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        low, _, sub = av
        return _sequence(list(sub)) if low >= 1 else None
    if op is _c.ASSERT:  # a positive lookahead or lookbehind: what it sees is in the text
        return _sequence(list(av[1]))
    return None  # a class, any character, an anchor, a negative lookaround, a backreference


def _stronger(a: Needs, b: Needs) -> Needs:
    """The more selective of two needs: the one whose shortest string is longer."""
    if a is None:
        return b
    if b is None:
        return a
    return a if min(map(len, a)) >= min(map(len, b)) else b


def absent(needs: Needs, text: str) -> bool:
    """True when `text` holds none of the needed strings: the pattern cannot match it."""
    return needs is not None and not any(n in text for n in needs)
