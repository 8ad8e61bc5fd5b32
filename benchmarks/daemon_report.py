"""The daemon benchmark's report: goals, the printed table, a line per round."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BUSY_WARNING = 0.05
SHARE_NAMES = {"others": "other processes", "steal": "the hypervisor (steal time)"}


@dataclass(frozen=True)
class Goal:
    key: str
    figure: str
    limit: float
    at_most: bool
    digits: int

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    @property
    def text(self) -> str:
        return f"{'≤' if self.at_most else '≥'} {self.limit:.{self.digits}f}"


GOALS = (
    Goal("peak_rss_mb", "peak RSS of the daemon (MB)", 120.0, True, 0),
    Goal("first_result_s", "process start → first result at the broker (s)", 1.5, True, 2),
    Goal("throughput_ratio", "results/s: daemon ÷ bare invoke loop", 0.9, False, 2),
    Goal("overhead_p50_ms", "capture → broker beyond the invoke, p50 (ms)", 2.0, True, 2),
    Goal("peer_ratio", "results/s: daemon ÷ peer-style sequential loop", 1.3, False, 2),
    Goal("ceiling_ratio", "results/s: daemon ÷ CPU ceiling", 0.9, False, 2),
)
INFO_ROWS = (
    ("chosen_threads", "interpreter threads the daemon ran with", 0),
    ("bare_invokes_per_s", "bare invoke loop (invokes/s)", 1),
    ("peer_per_s", "peer-style loop: read, resize, invoke, publish QoS 1 (results/s)", 1),
    ("ceiling_per_s", "CPU ceiling: cores ÷ (decode + preprocess + invoke CPU) (results/s)", 1),
    ("decode_cpu_ms", "decode CPU per frame (ms)", 2),
    ("preprocess_cpu_ms", "preprocess CPU per frame (ms)", 2),
    ("invoke_cpu_ms", "invoke CPU per frame, cheapest thread count (ms)", 2),
    ("model_loop_per_s", "decode + LoadedModel.run loop, one thread (frames/s)", 1),
    ("daemon_results_per_s", "daemon at the broker (results/s)", 1),
    ("bare_drift_pct", "bare loop before vs after the daemon, difference (%)", 0),
    ("bare_cpu_ms", "bare loop CPU per invoke, all threads (ms)", 2),
    ("peer_cpu_ms", "peer-style loop CPU per result, all threads (ms)", 2),
    ("model_loop_cpu_ms", "decode + LoadedModel.run CPU per frame (ms)", 2),
    ("daemon_cpu_ms", "daemon CPU per result, all threads (ms)", 2),
    ("beside_cpu_ms", "CPU per result beside the daemon: broker, subscriber, others (ms)", 2),
    ("work_bound_per_s", "bound: cores ÷ decode + LoadedModel.run CPU, no delivery (results/s)",
     1),
    ("host_bound_per_s", "bound, the broker and subscriber sharing the cores (results/s)", 1),
    ("host_bound_peer_ratio", "bound ÷ peer-style loop: the most a daemon could show", 2),
    ("host_bound_ceiling_ratio", "bound ÷ CPU ceiling: the most a daemon could show", 2),
    ("packed_per_s", "this daemon's CPU per result, perfectly packed (results/s)", 1),
    ("overhead_p99_ms", "capture → broker beyond the invoke, p99 (ms)", 2),
    ("peak_anon_rss_mb", "of which anonymous at most (MB; the rest is library pages)", 0),
    ("tensorflow_peak_rss_mb", "tf.lite.Interpreter with TensorFlow, peak RSS (MB)", 0),
)


def verdicts(figures: dict[str, float]) -> list[dict[str, Any]]:
    return [{"figure": g.figure, "key": g.key, "measured": figures[g.key], "goal": g.text,
             "met": g.met(figures[g.key])} for g in GOALS]


def print_table(report: dict[str, Any]) -> None:
    figures = report["figures"]
    rows = [(v["figure"], _fmt(v["measured"], g.digits), v["goal"], "yes" if v["met"] else "NO")
            for v, g in zip(report["goals"], GOALS, strict=True)]
    rows += [(label, _fmt(figures[key], digits), "", "")
             for key, label, digits in INFO_ROWS if key in figures]
    header = ("figure", "measured", "goal", "met?")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(4)]
    print(f"{report['machine']}; {report['threads']} thread(s), {report['frames']} frames, "
          f"latency at {report['fps']:g} fps; median of {len(report['rounds'])} round(s)")
    for what, share in report["cpu_elsewhere"].items():
        if share > BUSY_WARNING:
            print(f"warning: {SHARE_NAMES[what]} took {share:.0%} of the CPU during the run; "
                  "the figures are skewed")
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def describe_round(r: dict[str, float]) -> str:
    return (f"bare {r['bare_invokes_per_s']:.1f}/s, peer {r['peer_per_s']:.1f}/s, "
            f"daemon {r['daemon_results_per_s']:.1f}/s with {r['chosen_threads']:.0f} thread(s) "
            f"({r['throughput_ratio']:.2f} of bare, {r['peer_ratio']:.2f} of peer, "
            f"{r['ceiling_ratio']:.2f} of the CPU ceiling {r['ceiling_per_s']:.0f}/s; "
            f"bare before/after differ by {r['bare_drift_pct']:.0f}%), "
            f"first result {r['first_result_s']:.2f} s, "
            f"RSS {r['peak_rss_mb']:.0f} MB, beyond invoke p50 {r['overhead_p50_ms']:.2f} ms")


def stage_latencies(metrics: dict[str, Any] | None) -> dict[str, float]:
    """p50 per stage from the daemon's final metrics message, as the daemon saw them."""
    if not metrics:
        return {}
    pipeline = metrics.get("pipelines", {}).get("default", {})
    latency = pipeline.get("latency_ms", {})
    return {stage: values["p50"] for stage, values in latency.items()
            if isinstance(values, dict) and values.get("p50") is not None}
