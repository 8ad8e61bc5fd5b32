"""The daemon end to end against a bare interpreter loop, on a MobileNetV2 int8 bundle and a video.

Measured side by side in each round, with the same interpreter thread count:

* bare loop: ``ai_edge_litert`` Interpreter, set_tensor + invoke + get_tensor on one
  preprocessed frame → invokes/s and CPU per invoke; run right before and right after the
  daemon, and the ratio is taken to their mean (how much the two differ shows how steady the
  machine was);
* model loop: decode a video frame + ``LoadedModel.run`` (preprocess, invoke, post-process) in
  one thread, the daemon's per-frame code without its threads and delivery → frames/s;
* the daemon: ``edge-runtime run --source video.mp4 --max-frames N`` as a child process against
  a throw-away Mosquitto → seconds from process start to the first result at a subscriber,
  steady results/s at the subscriber, CPU per result, peak RSS (VmHWM) of the daemon;
* the daemon paced like a camera (``--fps``) → capture-to-broker latency beyond the invoke itself
  (arrival at the subscriber - ``frame.captured_at`` - ``timing_ms.inference``), p50 / p99;
* peer-style loop: read, resize and quantize with OpenCV and NumPy, invoke, publish the top-5
  with QoS 1, on one thread, right before and right after the daemon → results/s;
* CPU per step (decode on one thread and on FFmpeg's default threads, preprocess, invoke per
  thread count) → the CPU ceiling, cores ÷ (cheapest decode + preprocess + cheapest invoke)
  results/s;
* the bound: cores ÷ the CPU per frame of decode + ``LoadedModel.run`` in one loop (the daemon's
  frame work with nothing for delivery, at the cheapest thread count), and the same with the CPU
  the broker and the subscriber spend per result on the same cores (sampled from the whole
  machine during the daemon run). No daemon doing this frame work can exceed it here: its ratio
  to the peer loop and to the ceiling says which goals this host allows at all.

``--threads auto`` (the default) leaves the daemon to choose by measurement; the loops then run
with every count it may choose and the best counts. ``--clip`` picks the 640x480 MPEG-4 clip or
a 1280x720 H.264 one; ``--edge-runtime`` measures another daemon executable.

Once per run, the peak RSS of a child that imports TensorFlow and runs ``tf.lite.Interpreter`` on
the same model, for comparison (skipped without TensorFlow, or with ``--no-tensorflow``).
Figures are medians over the rounds. Other work on the machine skews them: the run says how much
CPU other processes took meanwhile.

The model, calibration frames, bundle and video are made once under ``.cache/bench/daemon/``
(the model has random weights: accuracy means nothing here, only speed and memory do).

    python benchmarks/daemon.py [--frames 300] [--threads auto|N] [--rounds 5] [--fps 25]
                                [--clip vga-mpeg4|720p-h264] [--edge-runtime PATH]
                                [--latency-frames 150] [--no-tensorflow] [--rebuild]
                                [--cold-cache] [--json PATH] [--monitor-cost]

``--monitor-cost`` runs only the daemon, with its health monitor and without (``--no-monitor``)
in alternating rounds, and times the monitor's ``observe`` per result in this process.

``--cold-cache`` (root) empties the page cache before each daemon run, as after a reboot: shared
libraries installed moments ago sit in the cache in large folios on recent kernels, and mapping
them then counts much more of each library as resident.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from assets import VIDEO_FRAMES, Assets, prepare_assets, quiet_tensorflow_env, tool
from common import mosquitto
from daemon_report import describe_round, print_table, stage_latencies, verdicts
from daemon_run import run_daemon
from loops import LoopRate, bare_loop, frame_cost, input_tensor, model_loop, peer_loop
from monitor import CpuShare, drop_page_cache, run_monitored
from subscriber import Arrivals

from edge_runtime.system.sysinfo import cpu_count

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "daemon"
CLIPS = ("vga-mpeg4", "720p-h264")
# With threads by measurement, a run makes this many times --frames results: the choice takes
# eight measuring windows of at least 0.3 s (about 1,600 results at 640x480 here), and the
# figures come from the results after it.
AUTO_RUN = 10
COST_FRAMES = 150  # frames the CPU cost per step is measured on

TF_EQUIVALENT = """
import sys
import numpy as np
import tensorflow as tf
interpreter = tf.lite.Interpreter(model_path=sys.argv[1], num_threads=int(sys.argv[2]))
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
tensor = np.zeros(detail["shape"], detail["dtype"])
for _ in range(int(sys.argv[3])):
    interpreter.set_tensor(detail["index"], tensor)
    interpreter.invoke()
    for out in interpreter.get_output_details():
        interpreter.get_tensor(out["index"])
"""




def tensorflow_rss(model: Path, threads: int, invokes: int = 50) -> int | None:
    """Peak RSS of the same work done through TensorFlow's own tf.lite.Interpreter."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    child = run_monitored([sys.executable, "-c", TF_EQUIVALENT, str(model), str(threads),
                           str(invokes)], env=quiet_tensorflow_env(), quiet=True)
    return child.peak_rss_bytes if child.exit_code == 0 else None


def measure(args: argparse.Namespace, assets: Assets) -> dict[str, Any]:
    tensor = input_tensor(assets)
    cpu = CpuShare()
    rounds: list[dict[str, Any]] = []
    with mosquitto() as broker:
        arrivals = Arrivals(*broker)
        try:
            for number in range(1, args.rounds + 1):
                rounds.append(measure_round(args, assets, tensor, broker, arrivals))
                print(f"round {number}: {describe_round(rounds[-1]['figures'])}",
                      file=sys.stderr)
        finally:
            arrivals.close()
    figures = {key: statistics.median(r["figures"][key] for r in rounds)
               for key in rounds[0]["figures"]}
    if args.tensorflow:
        if args.cold_cache:
            drop_page_cache()
        rss = tensorflow_rss(assets.model, int(figures["chosen_threads"]))
        if rss is not None:
            figures["tensorflow_peak_rss_mb"] = rss / 2**20
    return {"figures": figures, "rounds": rounds, "cpu_elsewhere": cpu.shares()}


def measure_round(args: argparse.Namespace, assets: Assets, tensor: np.ndarray,
                  broker: tuple[str, int], arrivals: Arrivals) -> dict[str, Any]:
    # The bare and peer loops run right before and right after the daemon, and the ratios take
    # their means: on a shared host the speed of the machine drifts within seconds. With threads
    # chosen by measurement, each loop runs with every thread count the daemon may choose and
    # the best count counts.
    counts = list(range(1, cpu_count() + 1)) if args.threads == "auto" else [args.threads]
    fixed = None if args.threads == "auto" else int(args.threads)
    before = best(bare_loop(assets.model, tensor, n, args.frames) for n in counts)
    peer_before = best(peer_loop(assets, n, args.frames, broker) for n in counts)
    run = run_daemon(assets, broker, arrivals, frames=args.frames * (AUTO_RUN if fixed is None
                                                                     else 1),
                     threads=fixed, cold=args.cold_cache, executable=args.edge_runtime)
    if fixed is None and run.threads.get("decided_after_frames") is None:
        raise SystemExit("the daemon had not chosen its threads by the end of its run: its "
                         "figures would be those of its measuring windows; raise --frames")
    peer_after = best(peer_loop(assets, n, args.frames, broker) for n in counts)
    after = best(bare_loop(assets.model, tensor, n, args.frames) for n in counts)
    bare = LoopRate((before.per_s + after.per_s) / 2, (before.cpu_ms + after.cpu_ms) / 2)
    peer = LoopRate((peer_before.per_s + peer_after.per_s) / 2,
                    (peer_before.cpu_ms + peer_after.cpu_ms) / 2)
    daemon = run.steady()
    chosen = run.threads.get("threads") or counts[-1]
    cost = frame_cost(assets, counts, min(args.frames, COST_FRAMES))
    ceiling = cost.ceiling(cpu_count())
    loops = {n: model_loop(assets, n, args.frames) for n in counts}
    in_process = loops.get(int(chosen)) or model_loop(assets, int(chosen), args.frames)
    cheapest_ms = min(loop.cpu_ms for loop in loops.values())
    paced = run_daemon(assets, broker, arrivals, frames=args.latency_frames,
                       threads=fixed, fps=args.fps, cold=args.cold_cache,
                       executable=args.edge_runtime)
    overhead = paced.overhead_ms()
    beside_ms = run.beside_ms()
    cores = cpu_count()
    # The most any daemon doing this frame work could serve on these cores: its decode and
    # LoadedModel.run CPU at the cheapest thread count, with nothing for delivery, threads or
    # monitoring, perfectly packed; then the same with the broker and the subscriber taking
    # their share of the cores.
    work_bound = cores / cheapest_ms * 1e3
    host_bound = cores / (cheapest_ms + beside_ms) * 1e3
    figures = {"bare_invokes_per_s": bare.per_s, "daemon_results_per_s": daemon.per_s,
               "throughput_ratio": daemon.per_s / bare.per_s,
               "peer_per_s": peer.per_s, "peer_ratio": daemon.per_s / peer.per_s,
               "ceiling_per_s": ceiling, "ceiling_ratio": daemon.per_s / ceiling,
               "decode_cpu_ms": cost.decode_ms, "preprocess_cpu_ms": cost.preprocess_ms,
               "invoke_cpu_ms": min(cost.invoke_ms.values()), "chosen_threads": float(chosen),
               "bare_drift_pct": abs(before.per_s - after.per_s) / bare.per_s * 100,
               "first_result_s": run.first_result_s,
               "peak_rss_mb": max(run.child.peak_rss_bytes, paced.child.peak_rss_bytes) / 2**20,
               "peak_anon_rss_mb": max(run.child.peak_anon_bytes,
                                       paced.child.peak_anon_bytes) / 2**20,
               "model_loop_per_s": in_process.per_s,
               "bare_cpu_ms": bare.cpu_ms, "peer_cpu_ms": peer.cpu_ms,
               "model_loop_cpu_ms": in_process.cpu_ms, "daemon_cpu_ms": daemon.cpu_ms,
               "beside_cpu_ms": beside_ms, "work_bound_per_s": work_bound,
               "packed_per_s": cores / (daemon.cpu_ms + beside_ms) * 1e3,
               "host_bound_per_s": host_bound, "host_bound_peer_ratio": host_bound / peer.per_s,
               "host_bound_ceiling_ratio": host_bound / ceiling,
               "overhead_p50_ms": float(np.percentile(overhead, 50)),
               "overhead_p99_ms": float(np.percentile(overhead, 99))}
    return {"figures": figures, "stages_p50_ms": stage_latencies(run.metrics),
            "paced_stages_p50_ms": stage_latencies(paced.metrics), "threads": run.threads,
            "invoke_cpu_ms_by_threads": cost.invoke_ms}


def measure_monitor(args: argparse.Namespace, assets: Assets) -> dict[str, Any]:
    """Results/s and CPU per result of the daemon with its health monitor and without it
    (``--no-monitor``), in alternating rounds (the order flips every round), same threads."""
    threads = 1 if args.threads == "auto" else int(args.threads)
    cpu = CpuShare()
    runs: dict[str, list[LoopRate]] = {"monitor": [], "no_monitor": []}
    with mosquitto() as broker:
        arrivals = Arrivals(*broker)
        try:
            for number in range(args.rounds):
                order = ["monitor", "no_monitor"][:: 1 if number % 2 == 0 else -1]
                for kind in order:
                    run = run_daemon(assets, broker, arrivals, frames=args.frames,
                                     threads=threads, executable=args.edge_runtime,
                                     extra=("--no-monitor",) if kind == "no_monitor" else ())
                    runs[kind].append(run.steady())
                print(f"round {number + 1}: " + ", ".join(
                    f"{k} {v[-1].per_s:.0f}/s {v[-1].cpu_ms:.2f} ms CPU" for k, v in runs.items()),
                    file=sys.stderr)
        finally:
            arrivals.close()
    ratios = [m.per_s / n.per_s for m, n in zip(runs["monitor"], runs["no_monitor"],
                                                strict=True)]
    return {"threads": threads, "rounds": {k: [vars(r) for r in v] for k, v in runs.items()},
            "ratio_per_pair": ratios, "observe_us": observe_cost_us(),
            "cpu_elsewhere": cpu.shares()}


def observe_cost_us(results: int = 5000) -> dict[str, float]:
    """The monitor's own cost per result on this machine (window closes included): a 10-class
    probability vector and a frame of each size."""
    import time

    from edge_runtime.monitor.health import HealthMonitor, MonitorSettings
    from edge_runtime.monitor.reference import Reference

    rng = np.random.default_rng(0)
    probs = [p.astype(np.float32) for p in rng.dirichlet(np.ones(10), results)]
    costs = {}
    for name, shape in (("640x480", (480, 640, 3)), ("1280x720", (720, 1280, 3))):
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        monitor = HealthMonitor(Reference.from_stats({"temperature": 1.5}),
                                [str(i) for i in range(10)], budget_ms=50.0,
                                settings=MonitorSettings(window=500))
        start = time.perf_counter()
        for p in probs:
            monitor.observe(latency_ms=2.0, probabilities=p, frame=frame)
        costs[name] = (time.perf_counter() - start) / results * 1e6
    return costs


def print_monitor(report: dict[str, Any]) -> None:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"

    on, off = report["rounds"]["monitor"], report["rounds"]["no_monitor"]
    print(f"monitor cost, {len(on)} alternating rounds, {report['threads']} thread(s)")
    print(f"  results/s with monitor      {spread([r['per_s'] for r in on])}")
    print(f"  results/s without monitor   {spread([r['per_s'] for r in off])}")
    print(f"  ratio per pair              {spread(report['ratio_per_pair'])}")
    print(f"  CPU per result with / without  {spread([r['cpu_ms'] for r in on])} / "
          f"{spread([r['cpu_ms'] for r in off])} ms")
    print("  observe() per result        " + ", ".join(
        f"{k} {v:.1f} µs" for k, v in report["observe_us"].items()))
    others = report["cpu_elsewhere"]["others"]
    print(f"  CPU taken by other processes meanwhile: {others:.0%}")


def best(rates: Iterable[LoopRate]) -> LoopRate:
    return max(rates, key=lambda rate: rate.per_s)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=VIDEO_FRAMES,
                        help="invokes of the bare loop and results of each daemon run")
    parser.add_argument("--threads", type=_threads, default="auto",
                        help="interpreter threads, everywhere; auto (the default): the daemon "
                             "chooses by measurement, the loops run with every count and the "
                             "best counts")
    parser.add_argument("--clip", choices=CLIPS, default=CLIPS[0],
                        help="the video every run reads: 640x480 MPEG-4 or 1280x720 H.264")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of bare loop, model loop, daemon and paced daemon")
    parser.add_argument("--fps", type=float, default=25.0, help="pace of the latency runs")
    parser.add_argument("--latency-frames", type=int, default=150,
                        help="results of each paced (latency) run")
    parser.add_argument("--no-tensorflow", dest="tensorflow", action="store_false",
                        help="skip the TensorFlow comparison")
    parser.add_argument("--rebuild", action="store_true", help="remake the cached assets")
    parser.add_argument("--cold-cache", action="store_true",
                        help="empty the page cache before each daemon and TensorFlow run, as "
                             "after a reboot (root only)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--monitor-cost", action="store_true",
                        help="only the daemon with and without its health monitor, alternately")
    parser.add_argument("--edge-runtime", metavar="PATH",
                        help="the daemon to measure (default: the edge-runtime installed beside "
                             "this Python); another version's, to compare two side by side")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.fps <= 0:
        parser.error("--rounds and --fps must be positive")
    if min(args.frames, args.latency_frames) < 20:
        parser.error("--frames and --latency-frames must be at least 20 (the start is warm-up)")
    return args


def _threads(text: str) -> int | str:
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is neither a positive whole number nor auto")


def main(argv: Sequence[str] | None = None) -> int:
    from edge_runtime.system.sysinfo import machine_description

    args = parse_args(argv)
    assets = prepare_assets(CACHE, args.rebuild)
    assets = replace(assets, video=assets.clips[args.clip])
    if args.monitor_cost:
        report = measure_monitor(args, assets)
        print_monitor(report)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    report = measure(args, assets)
    report.update(machine=machine_description(), threads=args.threads, frames=args.frames,
                  fps=args.fps, latency_frames=args.latency_frames, clip=args.clip,
                  bundle=str(assets.bundle), video=str(assets.video),
                  edge_runtime=args.edge_runtime or tool("edge-runtime"))
    report["goals"] = verdicts(report["figures"])
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
