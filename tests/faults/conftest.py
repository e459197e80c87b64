from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.faults.harness import RESULTS

ARTIFACTS = Path(__file__).parents[1] / "artifacts"


def table(rows: list[dict[str, Any]]) -> str:
    head = ["scenario", "sent", "acknowledged", "delivered", "duplicates", "dropped by reason", "unexplained loss",
            "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dropped = ", ".join(f"{k} {v}" for k, v in r["dropped"].items()) or "none"
        lines.append(f"| {r['scenario']} | {r['sent']} | {r['acknowledged']} | {r['delivered']} | {r['duplicates']} "
                     f"| {dropped} | {r['unexplained']} | {r['peak_rss_mib']} MiB |")
    recoveries = [f"- {r['scenario']}: recovered in {r['recovery_seconds']} s" for r in rows if "recovery_seconds" in r]
    return "\n".join(lines + (["", *recoveries] if recoveries else []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    text = table(RESULTS)
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(text)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.md").write_text(text + "\n")
