"""Markdown tables and the PNG plot of an autoscaling run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common.machine import machine_line
from bench.common.report import fmt, markdown_table, save_figure


def _value(value: float | None, digits: int) -> str:
    return fmt(value, digits) if value is not None else "-"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


# Digits each signal is shown with.
DIGITS = {
    "queueTime": 0,
    "queueComputeRatio": 3,
    "pendingRequests": 2,
    "runningSequences": 2,
    "requestsWaiting": 2,
    "kvCacheUtilization": 3,
    "generationPressure": 3,
}
SIGNAL_HEADERS = {"queueTime": "queueTime µs"}


def _generation(report: dict[str, Any]) -> bool:
    return bool(report.get("workload") == "generation")


def _ttft_table(report: dict[str, Any]) -> list[str]:
    """Time to first token per phase of each run (generation), by the phase a request was sent in."""
    rows = []
    for key, run in report["runs"].items():
        for phase in run.get("ttft_by_phase", []):
            rows.append(
                [
                    f"{key} (target {run['target']:g})",
                    f"{phase['phase']} ({phase['start_s']:g}-{phase['end_s']:g} s)",
                    str(phase["requests"]),
                    str(phase["refused_or_failed"]),
                    _value(phase["ttft_p50_ms"], 0),
                    _value(phase["ttft_p99_ms"], 0),
                ]
            )
    if not rows:
        return []
    return [
        "",
        "Time to first token per phase (requests by the phase they were sent in):",
        "",
        markdown_table(["metric", "phase", "requests", "refused", "TTFT p50 ms", "TTFT p99 ms"], rows),
    ]


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    generation = _generation(report)
    # Generation's latency is the time to first token (the answer's own length is the client's choice).
    latency, prefix = ("TTFT ", "ttft_") if generation else ("", "")
    steps = ", ".join(
        f"{step['name']} {step['load_x_capacity']:g}x for {step['duration_s']:g} s"
        for step in settings["steps"]
    )
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}; load average at end "
        f"{report['load_average_at_end'][0]:.2f}. Model: {report['model']['key']} "
        f"({report['model']['description']}), device {report['device']}.",
        "",
        "One real tritonserver stands in for each of N pods (it gets 1/N of the offered load). One pod's "
        f"capacity ({report.get('calibration_clients', 64)} closed-loop clients): "
        f"**{report['capacity_rps']:.1f} requests/s**. Scrape + HPA sync "
        f"every {settings['interval_s']:g} s; adapter window {settings['adapter_window_s']:g} s; scale-down "
        f"stabilisation {300 * settings['time_scale']:g} s (300 s x {settings['time_scale']:g}); open-loop "
        f"Poisson arrivals, shed beyond {settings['max_in_flight']} in flight. Steps: {steps}.",
    ]
    if report.get("sweep"):
        keys = [key for key in DIGITS if key in report["sweep"][0]]
        rows = [
            [
                f"{row['utilisation_offered']:g}x",
                fmt(row["served_rps"]),
                _value(row[f"{prefix}p50_ms"], 1),
                _value(row[f"{prefix}p99_ms"], 1),
                *([str(row["refused_or_failed"])] if generation else []),
                *(_value(row[key], DIGITS[key]) for key in keys),
                f"{row.get('foreign_cpu_share', 0):.0%}",
            ]
            for row in report["sweep"]
        ]
        lines += [
            "",
            "Each metric at a fixed offered load per pod (no autoscaler):",
            "",
            markdown_table(
                [
                    "offered / capacity",
                    "served req/s",
                    f"{latency}p50 ms",
                    f"{latency}p99 ms",
                    *(["refused"] if generation else []),
                    *(SIGNAL_HEADERS.get(key, key) for key in keys),
                    "other CPU",
                ],
                rows,
            ),
        ]
        at80 = report.get("at_80pct_utilisation", {})
        defaults = report["api_default_targets"]
        target_header = "target (API default; alone: the composite's)" if generation else "API default target"
        lines += [
            "",
            markdown_table(
                ["metric", target_header, "value at 80% of one pod's capacity"],
                [[key, fmt(defaults[key], 3), _value(at80.get(key), 3)] for key in defaults if key in at80],
            ),
        ]
    rows = []
    for key, run in report["runs"].items():
        a = run["assessment"]
        rows.append(
            [
                f"{key} (target {run['target']:g})",
                str(a["light_max_replicas"]),
                _seconds(a["heavy_first_scale_up_after_s"]),
                f"{a['heavy_final_replicas']} (max {a['heavy_max_replicas']}, "
                f"needed {a['heavy_needed_replicas_at_80pct']})",
                _seconds(a["heavy_reached_needed_after_s"]),
                str(a["heavy_direction_changes"]),
                str(a["heavy_second_half_shed"]),
                _value(a["heavy_second_half_p99_ms"], 0),
                _seconds(a["idle_back_to_min_after_s"]),
                f"{a.get('foreign_cpu_share_mean', 0):.0%} / {a.get('foreign_cpu_share_max') or 0:.0%}",
            ]
        )
    if rows:
        lines += [
            "",
            "HPA replay per metric (API default targets; light should stay at 1 pod, heavy needs "
            "ceil(load / 0.8) pods):",
            "",
            markdown_table(
                [
                    "metric",
                    "light: max pods",
                    "heavy: first scale-up",
                    "heavy: final pods",
                    "reached needed",
                    "flaps",
                    "shed (2nd half of heavy)",
                    "answer p99 ms (2nd half)" if generation else "p99 ms (2nd half)",
                    "idle: back to 1 pod",
                    "other CPU mean / max",
                ],
                rows,
            ),
        ]
    lines += _ttft_table(report)
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(report["runs"].items())
    columns = max(1, len(runs))
    has_sweep = bool(report.get("sweep"))
    rows = 4 if has_sweep else 3
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 2.8 * rows), squeeze=False)
    for column, (key, run) in enumerate(runs):
        timeline = run["timeline"]
        times = [p["t_s"] for p in timeline]
        load_axis, metric_axis, replica_axis = axes[0][column], axes[1][column], axes[2][column]
        load_axis.step(
            times, [p["offered_total_rps"] for p in timeline], where="post", label="offered (all pods)"
        )
        load_axis.plot(times, [p["per_pod_served_rps"] for p in timeline], ".-", label="served by one pod")
        load_axis.axhline(report["capacity_rps"], color="grey", linestyle=":", label="one pod's capacity")
        load_axis.set_title(f"{key}: load")
        load_axis.set_ylabel("requests / s")
        load_axis.legend(fontsize=7)
        metric_axis.plot(times, [p["metric"] for p in timeline], ".-", color="tab:purple", label=key)
        metric_axis.axhline(run["target"], color="tab:red", linestyle="--", label=f"target {run['target']:g}")
        metric_axis.set_yscale("symlog", linthresh=max(run["target"] / 10, 1e-3))
        metric_axis.set_title(f"{run['adapter_metric']}")
        metric_axis.legend(fontsize=7)
        replica_axis.step(
            times, [p["replicas"] for p in timeline], where="post", color="tab:green", label="replicas"
        )
        replica_axis.step(
            times,
            [p["raw_desired"] for p in timeline],
            where="post",
            color="tab:olive",
            alpha=0.5,
            linestyle="--",
            label="ceil(current x metric / target)",
        )
        replica_axis.set_ylabel("pods")
        replica_axis.set_xlabel("seconds")
        replica_axis.set_title("HPA desired replicas")
        replica_axis.legend(fontsize=7)
        for axis in (load_axis, metric_axis, replica_axis):
            for step in run["steps"]:
                axis.axvline(step["start_s"], color="lightgrey", linewidth=0.8)
        if has_sweep:
            sweep_axis = axes[3][column]
            points = [
                (row["utilisation_offered"], row[key]) for row in report["sweep"] if row[key] is not None
            ]
            sweep_axis.plot([x for x, _ in points], [y for _, y in points], "o-", color="tab:purple")
            sweep_axis.axhline(run["target"], color="tab:red", linestyle="--", label="API default target")
            sweep_axis.set_yscale("symlog", linthresh=max(run["target"] / 10, 1e-3))
            sweep_axis.set_xlabel("offered load / one pod's capacity")
            sweep_axis.set_title(f"{key} vs utilisation (no autoscaler)")
            sweep_axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
