"""bench/results.png: throughput beside its baselines, CPU and RSS over the steady-state run, the
scrape path beside Prometheus in agent mode and broker logs beside the OTel Collector (each
figure of the two peers as a ratio, from the same run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    rel, sdk, steady = results["relay"], results["otel_sdk"], results["steady_state"]
    prom = results.get("prometheus_agent")
    col = (results.get("broker_logs") or {}).get("otelcol")
    rows = 2 if prom or col else 1  # the peers' panels go on a second row
    fig, grid = plt.subplots(rows, 2, figsize=(13, 4.5 * rows), squeeze=False)
    ax1, ax2 = grid[0]
    if prom:
        _prom_agent_panel(grid[1][0], prom)
    if col:
        _collector_panel(grid[1][1], results["broker_logs"])
    for ax in grid[1] if rows == 2 else ():
        if not ax.has_data():
            ax.set_visible(False)
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
        series = steady["series_per_broker_read"]
        ax2.set_title(f"Reference load: host + {series:,}-series {broker}\n+ self-metrics", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _prom_agent_panel(ax: Any, r: dict[str, Any]) -> None:
    """The relay's figure over Prometheus agent's for each measure of the same scrape work."""
    rel, prom = r["steady"]["relay"], r["steady"]["prom"]
    mr, mp = rel["memory"], prom["memory"]
    figures = [  # label, relay, Prometheus agent, unit
        ("CPU per 1,000 samples", rel["cpu_s_per_1k_samples"] * 1000, prom["cpu_s_per_1k_samples"] * 1000, "ms"),
        ("wire bytes per sample", rel["wire_bytes_per_sample"], prom["wire_bytes_per_sample"], "B"),
        ("disk bytes per sample", rel["disk_bytes_per_sample"], prom["disk_bytes_per_sample"], "B"),
        ("peak RSS", mr["peak_rss_bytes"] / 2**20, mp["peak_rss_bytes"] / 2**20, "MiB"),
        ("peak USS", mr["peak_uss_bytes"] / 2**20, mp["peak_uss_bytes"] / 2**20, "MiB"),
    ]
    d = r["durability"]
    _ratio_panel(ax, figures, "Prometheus agent",
                 f"Beside Prometheus agent, same scrapes; kill -9 lost\nrelay {d['relay']['lost']} of "
                 f"{d['relay']['scraped']} scrapes, agent {d['prom']['lost']} of {d['prom']['scraped']}")


def _collector_panel(ax: Any, r: dict[str, Any]) -> None:
    """The relay's figure over otelcol-contrib's for each measure of the same broker log file."""
    rel, col = r["relay"], r["otelcol"]
    figures = [  # label, relay, the Collector, unit
        ("CPU per 100,000 lines", rel["cpu_s_per_100k_lines"], col["cpu_s_per_100k_lines"], "s"),
        ("seconds per 100,000 lines", 1e5 / rel["lines_per_s"], 1e5 / col["lines_per_s"], "s"),
        ("peak RSS", rel["peak_rss_bytes"] / 2**20, col["peak_rss_bytes"] / 2**20, "MiB"),
        ("peak USS", rel.get("peak_uss_bytes", 0) / 2**20, col.get("peak_uss_bytes", 0) / 2**20, "MiB"),
    ]
    _ratio_panel(ax, figures, "the Collector",
                 f"Broker logs ({r['lines']:,} lines) beside otelcol filelog;\n"
                 "the relay also spools with fsync, redacts and signs")


def _ratio_panel(ax: Any, figures: list[tuple[str, float, float, str]], peer: str, title: str) -> None:
    """One bar per figure: the relay's value over the peer's, on a log scale (< 1: the relay uses less)."""
    ratios = [a / b if b else 0.0 for _, a, b, _ in figures]
    y = list(range(len(figures)))
    bars = ax.barh(y, ratios, color=["#2f6fb0" if v <= 1 else "#a4161a" for v in ratios])
    ax.set_xscale("log")
    shown = [v for v in ratios if v > 0] or [1.0]
    ax.set_xlim(min(0.5, min(shown) / 2), max(2.0, max(shown)) * 12)  # room for the labels
    ax.axvline(1, color="#333333", linewidth=1)
    ax.set_yticks(y, [f[0] for f in figures])
    ax.invert_yaxis()
    ax.bar_label(bars, labels=[f" {a:,.2f} vs {b:,.2f} {u}" for _, a, b, u in figures], fontsize=8)
    ax.set_xlabel(f"relay / {peer} (log; < 1: the relay uses less)")
    ax.set_title(title, fontsize=10)
