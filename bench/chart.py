"""The PNG of a run: throughput and p99 per scenario and client count, ours beside the baselines."""

from __future__ import annotations

from pathlib import Path

COLORS = {
    "ours": "#2b6cb0",
    "postgres": "#2f855a",
    "redis": "#c53030",
    "etcd": "#b7791f",
    "django-hello": "#718096",
}


def draw(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["ops"]]
    labels = [f"{r['scenario']} · {r['system']} · {r['clients']}" for r in rows]
    colors = [COLORS.get(r["system"], "#444") for r in rows]
    height = max(4, 0.28 * len(rows) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, height), sharey=True)
    y = range(len(rows))
    left.barh(y, [r["ops_per_s"] for r in rows], color=colors)
    left.set_xscale("log")
    left.set_xlabel("ops/s (log scale; scenario 6: events/s written)")
    left.set_yticks(list(y), labels, fontsize=8)
    left.invert_yaxis()
    right.barh(y, [r["p99_ms"] or 0 for r in rows], color=colors)
    right.set_xscale("log")
    right.set_xlabel("p99 latency, ms (log scale)")
    right.axvline(100, color="#999", linestyle="--", linewidth=0.8)
    for ax in (left, right):
        ax.grid(axis="x", which="both", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    fig.legend(
        handles,
        list(COLORS),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.975),
        ncol=len(COLORS),
        frameon=False,
    )
    machine = report.get("machine", {})
    fig.suptitle(
        f"Memory Admin benchmark — {machine.get('nproc')} cores, {machine.get('cpu', '')[:60]}; "
        f"{report.get('seconds_per_run')} s per run",
        y=0.999,
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
