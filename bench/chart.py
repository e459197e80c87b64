"""bench/results.png: throughput beside its baselines, and CPU and RSS over the steady-state run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    rel, sdk, steady = results["relay"], results["otel_sdk"], results["steady_state"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = ["relay end to end\n(fsync, policy,\nzstd, Ed25519)", "OTel Python SDK\nexporter (same points)"]
    values = [rel["points_per_s"] / 1e3, sdk["points_per_s"] / 1e3]
    bars = ax1.bar(names, values, color=["#2f6fb0", "#9aa5b1"])
    ax1.bar_label(bars, labels=[f"{v:,.0f}k" for v in values])
    ax1.axhline(300, color="#a4161a", linestyle="--", linewidth=1)
    ax1.text(1.45, 305, "target 300k", color="#a4161a", ha="right", va="bottom", fontsize=9)
    five_x = 5 * sdk["points_per_s"] / 1e3
    ax1.axhline(five_x, color="#a4161a", linestyle=":", linewidth=1)
    ax1.text(1.45, five_x + 5, "target 5x the SDK", color="#a4161a", ha="right", va="bottom", fontsize=9)
    ax1.set_ylabel("thousand points per second")
    ax1.set_title(f"Throughput: {results['ratios']['throughput']:.1f}x the SDK, same run")
    samples = steady.get("samples") or []
    if samples:
        t = [s[0] for s in samples]
        ax2.plot(t, [s[1] for s in samples], color="#2f6fb0", label="CPU, % of one core")
        ax2.axhline(0.5, color="#2f6fb0", linestyle=":", linewidth=1)
        ax2.set_xlabel("seconds into the steady-state run")
        ax2.set_ylabel("CPU % of one core (budget 0.5, dotted)")
        ax3 = ax2.twinx()
        ax3.plot(t, [s[2] for s in samples], color="#8a4b00", label="RSS MiB")
        if len(samples[0]) > 3:  # USS beside RSS (results of issue 22 on)
            ax3.plot(t, [s[3] for s in samples], color="#8a4b00", linestyle="-.", linewidth=1, label="USS MiB")
            ax3.legend(loc="lower right", fontsize=8)
        ax3.axhline(60, color="#8a4b00", linestyle=":", linewidth=1)
        floor = results.get("import_floor", {}).get("relay_imported_rss_bytes")
        if floor:
            ax3.axhline(floor / 2**20, color="#8a4b00", linestyle="--", linewidth=1)
            ax3.text(t[-1], floor / 2**20 - 1, "imports alone", color="#8a4b00", ha="right", va="top", fontsize=9)
        ax3.set_ylabel("RSS and USS MiB (RSS budget 60, dotted)")
        ax3.set_ylim(0, max(80, max(s[2] for s in samples) * 1.2))
        broker = f"Kafka broker ({steady['partitions']:,} partitions)" if "partitions" in steady else "broker"
        ax2.set_title(f"Reference load: host + {steady['series_per_broker_read']:,}-series {broker} + self")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
