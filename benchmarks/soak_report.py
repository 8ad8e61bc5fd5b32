"""The soak's report: figures from the run and the subscriber's tally, and the printed table."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from soak_tally import PIPELINE, Restart, Tally

from edge_runtime.system.sysinfo import machine_description

RSS_GOAL_PCT = 5.0


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the daemon started
    rss_kb: int  # VmRSS = anonymous + file-backed + shared memory, each below
    anon_kb: int
    file_kb: int
    shmem_kb: int
    made: int  # results the daemon had made (outbox last_seq)
    seen: int  # distinct seqs at the subscriber
    depth: int  # outbox rows not yet acknowledged
    wal_kb: int  # size of the outbox's SQLite write-ahead log



@dataclass
class Run:
    exit_code: int
    wall_s: float
    restarts: list[Restart]
    samples: list[Sample]
    made: int
    depth_after_exit: int
    dropped_after_exit: int
    log_tail: str



def summarise(args: argparse.Namespace, run: Run, tally: Tally, others: dict[str, float]
              ) -> dict[str, Any]:
    after = [s for s in run.samples if s.made >= args.warmup_frames]
    warm = after[0] if after else None
    peak = max(after, key=lambda s: s.rss_kb) if after else None
    final = run.samples[-1] if run.samples else None
    growth = (peak.rss_kb - warm.rss_kb) / warm.rss_kb * 100 if warm and peak else None
    missing = tally.missing(args.frames)
    metrics = tally.last_metrics or {}
    frames = ((metrics.get("pipelines") or {}).get(PIPELINE) or {}).get("frames") or {}
    # A result the outbox refused is skipped and its seq spent; the counter says why it is missing.
    unstored = int(frames.get("unstored", 0))
    nothing_lost = (missing == 0 and run.made == args.frames and run.dropped_after_exit == 0
                    and unstored == 0)
    return {
        "machine": machine_description(),
        "frames": args.frames, "restart_every": args.restart_every, "down_s": args.down_s,
        "warmup_frames": args.warmup_frames,
        "made": run.made, "wall_s": round(run.wall_s, 1),
        "results_per_s": round(run.made / run.wall_s, 1),
        "restarts": [r.figures() for r in run.restarts],
        "rss_mib": {
            "at_warmup": _mib(warm), "max_after_warmup": _mib(peak), "final": _mib(final),
            "growth_pct": round(growth, 2) if growth is not None else None,
        },
        "peak_backlog": max((s.depth for s in run.samples), default=0),
        "outbox_depth_at_end": run.depth_after_exit,
        "outbox_dropped": run.dropped_after_exit,
        "received": tally.messages, "distinct": tally.distinct, "missing": missing,
        "duplicates": tally.duplicates, "beyond_n": tally.beyond(args.frames),
        "final_metrics": {"mqtt": metrics.get("mqtt"), "outbox": metrics.get("outbox"),
                          "frames": frames},
        "others_cpu_share": {k: round(v, 3) for k, v in others.items()},
        "goals": {
            f"RSS after warm-up grows < {RSS_GOAL_PCT:g} %":
                growth is not None and growth < RSS_GOAL_PCT,
            "outbox drained to zero": run.depth_after_exit == 0,
            "nothing lost": nothing_lost,
        },
        "daemon_log_tail": run.log_tail,
        "samples": [asdict(s) for s in run.samples],
    }


def _mib(sample: Sample | None) -> dict[str, float] | None:
    """A sample's resident memory in MiB: total, anonymous, file-backed."""
    if sample is None:
        return None
    return {"total": round(sample.rss_kb / 1024, 1), "anon": round(sample.anon_kb / 1024, 1),
            "file": round(sample.file_kb / 1024, 1), "made": sample.made}


def _rss(memory: dict[str, float] | None) -> str:
    if memory is None:
        return "-"
    return (f"{memory['total']:.1f} MiB (anonymous {memory['anon']:.1f} + files "
            f"{memory['file']:.1f}) at {memory['made']:.0f} results")


def _s(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def print_report(r: dict[str, Any]) -> None:
    rss = r["rss_mib"]
    print(f"soak on {r['machine']}")
    print(f"  {r['frames']} frames, broker restarted every {r['restart_every']} results made, "
          f"down {r['down_s']:g} s each")
    rows = [
        ("results made / wall time", f"{r['made']} / {r['wall_s']:.1f} s"),
        ("results/s (outages included)", f"{r['results_per_s']:.1f}"),
        ("broker restarts", str(len(r["restarts"]))),
        (f"RSS at warm-up ({r['warmup_frames']} results)", _rss(rss["at_warmup"])),
        ("RSS max after warm-up", _rss(rss["max_after_warmup"])),
        ("RSS final (last sample before exit)", _rss(rss["final"])),
        ("RSS growth after warm-up", f"{rss['growth_pct']} %"),
        ("peak outbox backlog (sampled)", str(r["peak_backlog"])),
        ("outbox depth after exit", str(r["outbox_depth_at_end"])),
        ("outbox rows dropped (full)", str(r["outbox_dropped"])),
        ("received / distinct seqs", f"{r['received']} / {r['distinct']}"),
        (f"missing of 1..{r['frames']}", str(r["missing"])),
        ("duplicates", str(r["duplicates"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    if r["restarts"]:
        print("\n  restart  made / seen at stop  down s  made at up  backlog at up / peak  "
              "daemon online s  first new result s  caught up s")
        for x in r["restarts"]:
            at_stop = f"{x['made_at_stop']} / {x['seen_at_stop']}"
            backlog = f"{x['backlog_at_up']} / {x['peak_backlog']}"
            print(f"  {x['number']:>7}  {at_stop:>19}  {x['down_s']:>6.2f}  "
                  f"{x['made_at_up']:>10}  {backlog:>19}  "
                  f"{_s(x['daemon_online_s']):>15}  {_s(x['first_new_result_s']):>18}  "
                  f"{_s(x['caught_up_s']):>11}")
        print("  (seconds from the broker's start; backlog = outbox depth, peak = largest sampled "
              "until the next restart)")
    mqtt = (r["final_metrics"] or {}).get("mqtt") or {}
    if mqtt:
        print(f"\n  daemon's last metrics message (sent before its final drain): reconnects "
              f"{mqtt.get('reconnects')}, published {mqtt.get('published')}, acked "
              f"{mqtt.get('acked')}, rejected {mqtt.get('rejected')}")
    frames = (r["final_metrics"] or {}).get("frames") or {}
    if frames:
        print("  frames: " + ", ".join(f"{k} {v}" for k, v in frames.items()))
    shares = r["others_cpu_share"]
    print(f"  CPU taken elsewhere meanwhile: other processes {shares['others']:.0%}, "
          f"hypervisor {shares['steal']:.0%} of both cores")
    print()
    for goal, met in r["goals"].items():
        print(f"  goal: {goal}: {'met' if met else 'NOT met'}")
