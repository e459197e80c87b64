"""The literals a value rule cannot match without (relay.policy.literals): never wrong, so the
policy's decisions on log bodies are the same with the shortcut as without it."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from bench import logs as bench_logs
from relay.policy import engine, literals, load_policy

ROOT = Path(__file__).parents[2]
SECRET = b"0123456789abcdef0123456789abcdef"
FIXTURE = ROOT / "tests" / "fixtures" / "kafka_4.4_server.log"
PATTERNS = [
    r"(?<=clientId=)[^\s,]+", r"(?:ab|cd)+x", r"(?:ab|cd)*x", r"(?:ab)?cd", r"a(?:b|)c", r"(?i)secret",
    r"(?i:secret)-\d", r"x(?=yz)", r"(?<!no)pe", r"[Mm]ember \S+", r"a{2}b", r"a{0,2}b", r"(ab)\1",
    r"(?>ab|a)c", r"e\.g", r"\d+\.\d+", r"^host", r"(?:AKIA|ASIA)[A-Z]{4}",
]
ALPHABET = "abcdexyzMmember =.,:/-0123456789ASIKhostclientIdsecretSECRETpeno\n\t"


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The lines of a real broker's server.log and of the bench's."""
    path = tmp_path_factory.mktemp("literals") / "server.log"
    bench_logs.write_log(path, 3_000)
    return [*FIXTURE.read_text().split("\n"), *path.read_text().split("\n")]


def test_the_shipped_rules_need_what_they_look_for() -> None:
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    needs = {rule.label: literals.required(det.pattern) for rule, det in p._detectors}
    assert needs["log-home-dir"] == {"/home/", "/Users/"}
    assert needs["log-client-id"] == {"clientId=", "client.id=", "client.id = ", "clientID=", "client-id="}
    assert needs["detector:url_credentials"] == {"://"}
    assert needs["detector:credit_card"] is None  # digits anywhere: nothing literal to look for
    assert literals.required(re.compile("(?i)secret")) is None
    assert literals.required(re.compile("(?:ab)?cd")) == {"cd"}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_text_without_the_needed_literals_never_matches(pattern: str, bodies: list[str]) -> None:
    compiled = re.compile(pattern)
    needs = literals.required(compiled)
    rng = random.Random(pattern)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(3_000)]
    for text in texts + bodies:
        if literals.absent(needs, text):
            assert compiled.search(text) is None, (pattern, text)


def test_the_policy_decides_the_same_with_and_without_the_shortcut(monkeypatch: pytest.MonkeyPatch,
                                                                  bodies: list[str]) -> None:
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    texts = bodies
    with_it = [p.decide("logs", None, "body", t) for t in texts]
    for rule, det in p._detectors:  # the shortcut is taken for these texts, or this test shows nothing
        assert any(literals.absent(literals.required(det.pattern), t) for t in texts) or rule.detector == "credit_card"
    monkeypatch.setattr(engine, "required", lambda pattern: None)
    assert [p.decide("logs", None, "body", t) for t in texts] == with_it
