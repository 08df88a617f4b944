"""Markdown tables and the PNG plot of a data-plane run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common.machine import machine_line
from bench.common.report import fmt, markdown_table, save_figure


def _raw_table(raw: dict[str, Any]) -> str:
    by_size: dict[int, dict[bool, dict[str, Any]]] = {}
    for point in raw["points"]:
        by_size.setdefault(point["batch_size"], {})[point["grouped"]] = point
    rows = []
    for size in sorted(by_size):
        plain, grouped = by_size[size].get(False), by_size[size].get(True)
        rows.append(
            [
                str(size),
                fmt(plain["throughput_tps"]) if plain else "-",
                fmt(plain["padding_efficiency"], 2) if plain else "-",
                fmt(grouped["throughput_tps"]) if grouped else "(same)",
                fmt(grouped["padding_efficiency"], 2) if grouped else "-",
            ]
        )
    headers = [
        "batch",
        "plain padding texts/s",
        "real/padded tokens",
        "length-grouped texts/s",
        "real/padded tokens",
    ]
    return markdown_table(headers, rows)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _served_table(contenders: dict[str, Any]) -> str:
    rows = []
    for name, contender in contenders.items():
        for level in contender["levels"]:
            triton = level.get("triton") or {}
            compute = None
            if triton.get("compute_infer_us") is not None:
                compute = sum(
                    triton.get(key) or 0.0
                    for key in ("compute_input_us", "compute_infer_us", "compute_output_us")
                )
            rows.append(
                [
                    name,
                    str(level["concurrency"]),
                    fmt(level["throughput_rps"]),
                    fmt(level["p50_ms"], 2),
                    fmt(level["p99_ms"], 2),
                    str(level["errors"]),
                    fmt(triton.get("queue_us"), 0) if triton else "n/a",
                    fmt(compute, 0) if triton else "n/a",
                    fmt(triton.get("average_batch"), 2) if triton else "n/a",
                    _client(level.get("client") or {}),
                    _share(level.get("foreign_cpu_share")),
                ]
            )
    headers = [
        "contender",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "queue µs/req",
        "compute µs/req",
        "avg batch",
        "client: CPU cores",
        "other CPU",
    ]
    return markdown_table(headers, rows)


def _client(client: dict[str, Any]) -> str:
    """Which generator drove the level, and (perf_analyzer) how much CPU it used itself."""
    if "cores" not in client:
        return "python"
    return f"pa: {client['cores']:.2f}"


def _client_check(ours: dict[str, Any] | None) -> list[str]:
    check = (ours or {}).get("client_check")
    if not check:
        return []
    if "error" in check:
        return [f"Client check failed: `{check['error'].strip().splitlines()[-1]}`", ""]
    return [
        f"Client check (is perf_analyzer the bottleneck?): ours at c={check['concurrency']}, one "
        f"perf_analyzer {fmt(check['one_client_rps'])} req/s using {check['one_client_cores']:.2f} "
        "CPU cores; "
        f"two perf_analyzer processes at c={check['two_clients_concurrency_each']} each, at once: "
        f"{fmt(check['two_clients_rps'])} req/s together (x{check['ratio']:.2f}), "
        f"{check['two_clients_cores']:.2f} cores.",
        "",
    ]


def _ratio_table(ratios: list[dict[str, Any]]) -> str:
    rows = []
    for ratio in ratios:
        sign = "≥" if ratio["higher"] else "≤"
        met = {True: "yes", False: "**no**", None: "not run"}[ratio["met"]]
        if ratio["target"] is None:
            met = "(reported)" if ratio["value"] is not None else "not run"
        target = "-" if ratio["target"] is None else f"{sign} {ratio['target']}"
        rows.append([ratio["name"], fmt(ratio["value"], 2), target, met])
    return markdown_table(["ratio", "measured", "target", "met"], rows)


def _ours_setup(ours: dict[str, Any] | None) -> list[str]:
    """How ours was built and what its runtime measured at load, above the table that shows the result."""
    config = (ours or {}).get("config") or {}
    options = config.get("build_options")
    if not options:
        return []
    built = ", ".join(f"{key} {value}" for key, value in options.items())
    notes = "; ".join(config.get("runtime_log") or []) or "nothing logged"
    return [f"Ours: `modeldeploy build` with {built}; its runtime at load: {notes}.", ""]


def _figures(metrics: dict[str, Any] | None) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in (metrics or {}).items()) or "-"


def _optimised_section(optimised: dict[str, Any] | None) -> list[str]:
    """Accuracy of each optimised contender beside its speed, and the int8 model's raw limit."""
    if not optimised:
        return []
    rows = []
    for name, entry in optimised.items():
        if entry.get("error"):
            rows.append([name, f"build failed: {entry['error']}", "-", "-"])
            continue
        gate = entry.get("gate") or {}
        optimisation = gate.get("optimisation") or {}
        setup = f"{optimisation.get('quantization')} / {optimisation.get('dtype')}"
        if optimisation.get("layers_float32") is not None:
            setup += (
                f"; {optimisation.get('layers_int8')} linear layers int8, "
                f"{len(optimisation['layers_float32'])} kept float32"
            )
        rows.append(
            [
                name,
                setup,
                f"{_figures(gate.get('metrics'))} on {gate.get('texts')} texts",
                _figures(entry.get("workload_accuracy")),
            ]
        )
    lines = [
        "Optimised contenders against float32 (the build's accuracy gate on its calibration texts, and the "
        "in-process model each one serves on the whole workload):",
        "",
        markdown_table(["contender", "model", "build's gate", "on the workload"], rows),
    ]
    raw = (optimised.get("ours-int8") or {}).get("raw")
    if raw:
        lines += ["", "Raw in-process limit of the int8 model ours-int8 serves:", "", _raw_table(raw)]
    return ["", *lines, ""]


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    rounds = int(settings.get("rounds", 1))
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}; load average at end "
        f"{report['load_average_at_end'][0]:.2f}. Device {report['device']}, {report['dtype']}.",
        "",
        f"Workload: {settings['texts']} fixed English texts of 5-60 words (bench/common/sentences.txt), "
        f"one text per request; closed loop, {settings['duration_s']:g} s measured per contender and "
        f"concurrency level, in {rounds} window{'s' if rounds > 1 else ''} of "
        f"{settings['duration_s'] / rounds:g} s after {settings['warmup_s']:g} s of warm-up each; contenders "
        "interleaved (each level runs every contender in turn"
        f"{', in reverse order every other round' if rounds > 1 else ''}); {settings['client']}. "
        + (
            "Queue/compute are Triton's own statistics over the measured windows, per request, as "
            "perf_analyzer reports them (Python generator: /metrics counters over the window) "
            if settings.get("loadgen") == "perf_analyzer"
            else "Queue/compute are Triton's own /metrics counters over the window, per request "
        )
        + "(compute = input + infer + output; a batch's time counts once per request in it). 'client: CPU "
        "cores': CPU time of the perf_analyzer process over its run ('pa') / wall time; 'python': the "
        "asyncio generator, in the benchmark's own process. p50/p99 from perf_analyzer: each run's own, "
        "averaged over the rounds weighted by requests. 'other CPU': "
        "share of the machine's CPU used by processes other than the benchmark and its servers during the "
        f"measurement (above {settings.get('max_foreign_cpu_share', 1):.0%} it is repeated, up to "
        f"{settings.get('retries', 0)} times, and the least disturbed attempt kept).",
    ]
    for name, reason in report.get("not_run", {}).items():
        lines += ["", f"Not run: {name}: {reason}."]
    for key, model in report["models"].items():
        lines += [
            "",
            f"### {key}: {model['description']}",
            "",
            "Raw in-process limit (tokenizer + forward + post-processing, no server"
            + (f"; best of {rounds} passes per point" if rounds > 1 else "")
            + "):",
            "",
            _raw_table(model["raw"]),
            *_optimised_section(model.get("optimised")),
            "",
            "Served (one text per request):",
            "",
            *_ours_setup(model["contenders"].get("ours")),
            _served_table(model["contenders"]),
            "",
            *_client_check(model["contenders"].get("ours")),
            *[
                f"**{name} failed**: `{contender['error'].strip().splitlines()[-1]}`\n"
                for name, contender in model["contenders"].items()
                if contender.get("error")
            ],
            _ratio_table(model["ratios"]),
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"].items())
    figure, axes = plt.subplots(2, max(1, len(models)), figsize=(6.5 * max(1, len(models)), 8), squeeze=False)
    for column, (key, model) in enumerate(models):
        throughput_axis, latency_axis = axes[0][column], axes[1][column]
        for name, contender in model["contenders"].items():
            concurrency = [level["concurrency"] for level in contender["levels"]]
            throughput_axis.plot(
                concurrency, [lvl["throughput_rps"] for lvl in contender["levels"]], "o-", label=name
            )
            latency_axis.plot(
                concurrency, [lvl["p50_ms"] for lvl in contender["levels"]], "o-", label=f"{name} p50"
            )
            latency_axis.plot(
                concurrency,
                [lvl["p99_ms"] for lvl in contender["levels"]],
                "x--",
                alpha=0.6,
                label=f"{name} p99",
            )
        raw = model["raw"]
        for label, best, style in (
            ("raw plain", raw["best_plain"], ":"),
            ("raw grouped", raw["best_grouped"], "--"),
        ):
            throughput_axis.axhline(
                best["throughput_tps"],
                linestyle=style,
                color="grey",
                label=f"{label} (batch {best['batch_size']})",
            )
        throughput_axis.set_title(f"{key} ({report['device']}): throughput")
        throughput_axis.set_xscale("log", base=2)
        throughput_axis.set_xlabel("concurrent clients")
        throughput_axis.set_ylabel("texts / s")
        throughput_axis.set_ylim(bottom=0)
        throughput_axis.legend(fontsize=8)
        latency_axis.set_title(f"{key}: latency")
        latency_axis.set_xscale("log", base=2)
        latency_axis.set_yscale("log")
        latency_axis.set_xlabel("concurrent clients")
        latency_axis.set_ylabel("ms")
        latency_axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
