"""``edge-runtime`` as a user runs it: the real CLI in a subprocess, a real Mosquitto, real images
and video, and the real int8 bundle from the converter."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import pytest
from support.daemon import (
    DaemonProcess,
    Mosquitto,
    Subscriber,
    copy_bundle,
    missing,
    new_device,
    outbox_depth,
    read_retained,
    result_topic,
    results,
    run_args,
    run_cli,
    seqs,
    status_topic,
    top_label,
    wait_for,
    wait_for_seqs,
)

pytestmark = pytest.mark.mosquitto

REF = re.compile(r"^digit_\d/\d+\.png$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Run:
    device: str
    returncode: int
    stderr: str
    results: list[dict[str, Any]]
    statuses: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    retained_status: Any


def run_to_end(broker: Mosquitto, workdir: Path, bundle: Path | str, source: Path | str,
               *extra: str, state_dir: Path | None = None, expect: int | None = None,
               device: str | None = None) -> Run:
    """Run the daemon until its source ends; collect everything that reached the broker."""
    device = device or new_device("cli")
    state = state_dir or workdir / f"state-{device}"
    with Subscriber(broker, f"edge/{device}/#") as sub:
        with DaemonProcess(run_args(bundle, source, broker_url=broker.url, device=device,
                                    state_dir=state, extra=extra), workdir) as daemon:
            code = daemon.wait(120)
            tail = daemon.tail()
            stderr = daemon.stderr()
        assert code == 0, tail
        if expect is not None:
            arrived = sub.wait_until(lambda msgs: len({m.json()["seq"] for m in msgs}) >= expect,
                                     20, result_topic(device))
            assert arrived, f"{len(results(sub, device))} of {expect} results arrived\n{tail}"
        # The final metrics and the offline status follow the last result on one connection.
        sub.wait_until(lambda msgs: any(m.json().get("state") == "offline" for m in msgs), 10,
                       status_topic(device))
        collected = Run(
            device=device, returncode=code, stderr=stderr, results=results(sub, device),
            statuses=sub.payloads(status_topic(device)),
            metrics=sub.payloads(f"edge/{device}/metrics"),
            retained_status=None,
        )
    collected.retained_status = read_retained(broker, status_topic(device))
    return collected


def val_images(digits: Path) -> list[str]:
    root = digits / "images" / "val"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


@pytest.fixture(scope="module")
def folder_run(broker: Mosquitto, digits: Path, digits_bundle: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Every validation image once through the bundle."""
    count = len(val_images(digits))
    return run_to_end(broker, tmp_path_factory.mktemp("folder"), digits_bundle,
                      digits / "images" / "val", expect=count)


# ----- one run over the image folder ---------------------------------------------------------


def test_every_image_gets_one_result_numbered_without_gaps(folder_run: Run, digits: Path,
                                                           ) -> None:
    images = val_images(digits)
    numbers = seqs(folder_run.results)
    assert sorted(set(numbers)) == list(range(1, len(images) + 1)), \
        f"missing {missing(numbers, len(images))[:10]}"
    refs = sorted({r["frame"]["ref"] for r in folder_run.results})
    assert refs == images


def test_results_follow_the_edge_result_schema(folder_run: Run, digits_bundle: Path) -> None:
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    labels = (digits_bundle / "labels.txt").read_text().split()
    for r in folder_run.results[:50]:
        assert r["schema"] == "edge-result/1"
        assert r["device"] == folder_run.device
        assert r["pipeline"] == "default"
        assert r["task"] == "classification"
        assert r["model"] == {"name": "digits", "version": manifest["version"],
                              "sha256": manifest["sha256"]}
        assert SHA256.match(r["model"]["sha256"])
        assert REF.match(r["frame"]["ref"]), r["frame"]
        assert isinstance(r["frame"]["index"], int)
        assert isinstance(r["frame"]["captured_at"], float)
        assert r["ts"] >= r["frame"]["captured_at"] - 1
        assert r["predictions"], r
        for p in r["predictions"]:
            assert labels[p["index"]] == p["label"]
            assert 0.0 <= p["score"] <= 1.0
        timing = r["timing_ms"]
        assert set(timing) == {"preprocess", "inference", "postprocess", "total"}
        assert all(v >= 0 for v in timing.values())


def test_accuracy_on_labelled_images(folder_run: Run) -> None:
    correct = [top_label(r) == r["frame"]["ref"].split("/")[0] for r in folder_run.results]
    accuracy = sum(correct) / len(correct)
    assert accuracy >= 0.9, f"accuracy {accuracy:.3f} over {len(correct)} images"


def test_status_is_online_while_running_then_offline_retained(folder_run: Run) -> None:
    states = [s["state"] for s in folder_run.statuses]
    assert states and states[0] == "online", states
    assert states[-1] == "offline", states
    assert folder_run.retained_status is not None, "no retained status after exit"
    assert folder_run.retained_status["state"] == "offline"
    assert folder_run.retained_status["device"] == folder_run.device


def test_a_final_metrics_message_sums_the_run_up(folder_run: Run, digits: Path) -> None:
    assert folder_run.metrics, "no metrics message"
    final = folder_run.metrics[-1]
    pipeline = final["pipelines"]["default"]
    count = len(val_images(digits))
    assert isinstance(pipeline["fps"], int | float)
    frames = pipeline["frames"]
    assert frames["processed"] == count
    assert frames["captured"] >= count
    assert frames["dropped"] == 0  # a folder read without --fps is lossless
    for stage in ("preprocess", "inference", "postprocess", "total"):
        summary = pipeline["latency_ms"][stage]
        assert summary["p50"] <= summary["p95"] <= summary["p99"], (stage, summary)
    # Sent after the final drain: it counts every result as delivered.
    assert final["outbox"]["depth"] == 0
    assert final["mqtt"]["acked"] >= count
    assert final["system"]["rss_bytes"] > 10 * 2**20
    assert pipeline["model"]["sha256"] == folder_run.results[0]["model"]["sha256"]


def test_threads_are_chosen_by_measurement_and_status_says_so(folder_run: Run) -> None:
    threads = folder_run.metrics[-1]["pipelines"]["default"]["threads"]
    assert threads["mode"] == "auto"
    assert isinstance(threads["threads"], int) and threads["threads"] >= 1
    assert isinstance(threads["reason"], str) and threads["reason"]
    online = [s for s in folder_run.statuses if s["state"] == "online"]
    assert online[-1]["pipelines"]["default"]["threads"]["mode"] == "auto"


def test_an_explicit_thread_count_wins(broker: Mosquitto, digits: Path, digits_bundle: Path,
                                       tmp_path: Path) -> None:
    run = run_to_end(broker, tmp_path, digits_bundle, digits / "images" / "val",
                     "--threads", "1", "--max-frames", "20", expect=20)
    threads = run.metrics[-1]["pipelines"]["default"]["threads"]
    assert threads == {"mode": "fixed", "threads": 1, "reason": "set in the config",
                       "preprocess": "capture thread"}


# ----- other sources and model forms ---------------------------------------------------------


def test_every_video_frame_gets_a_result_with_its_index(broker: Mosquitto, digits: Path,
                                                        digits_bundle: Path,
                                                        tmp_path: Path) -> None:
    video = digits / "digits.mp4"
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames > 100

    run = run_to_end(broker, tmp_path, digits_bundle, video, expect=frames)

    assert sorted(set(seqs(run.results))) == list(range(1, frames + 1))
    refs = sorted(int(r["frame"]["ref"]) for r in run.results)
    assert refs == list(range(frames))
    assert all(r["frame"]["index"] == int(r["frame"]["ref"]) for r in run.results)


def test_a_paced_video_behaves_like_a_camera(broker: Mosquitto, digits: Path,
                                             digits_bundle: Path, tmp_path: Path) -> None:
    fps, count = 40.0, 20
    run = run_to_end(broker, tmp_path, digits_bundle, digits / "digits.mp4",
                     "--fps", str(fps), "--max-frames", str(count), expect=count)

    ordered = sorted(run.results, key=lambda r: r["seq"])
    assert seqs(ordered) == list(range(1, count + 1))
    refs = [int(r["frame"]["ref"]) for r in ordered]
    assert refs == sorted(set(refs)) and refs[0] == 0, refs
    # Pacing can only stretch the span, never shrink it: a lower bound cannot flake.
    span = ordered[-1]["frame"]["captured_at"] - ordered[0]["frame"]["captured_at"]
    assert span >= 0.8 * (count - 1) / fps, f"{count} frames captured within {span:.3f} s"


def test_a_bare_tflite_described_by_flags_predicts_like_its_bundle(
        broker: Mosquitto, digits: Path, digits_bundle: Path, folder_run: Run,
        tmp_path: Path) -> None:
    bare = tmp_path / "elsewhere" / "digits.tflite"
    bare.parent.mkdir()
    bare.write_bytes((digits_bundle / "model.tflite").read_bytes())
    count = len(folder_run.results)

    run = run_to_end(broker, tmp_path, bare, digits / "images" / "val",
                     "--labels", str(digits / "labels.txt"), "--task", "classification",
                     "--input-mean", "0", "--input-std", "255", "--color", "GRAY",
                     expect=count)

    assert {r["model"]["name"] for r in run.results} == {"digits"}
    bundle_top = {r["frame"]["ref"]: top_label(r) for r in folder_run.results}
    bare_top = {r["frame"]["ref"]: top_label(r) for r in run.results}
    assert bare_top == bundle_top


def test_seq_continues_across_runs_with_the_same_state_dir(
        broker: Mosquitto, digits: Path, digits_bundle: Path, tmp_path: Path) -> None:
    device, state = new_device("seq"), tmp_path / "state"
    source = digits / "images" / "val"
    first = run_to_end(broker, tmp_path, digits_bundle, source, "--max-frames", "5",
                       state_dir=state, device=device, expect=5)
    second = run_to_end(broker, tmp_path, digits_bundle, source, "--max-frames", "5",
                        state_dir=state, device=device, expect=5)
    assert sorted(set(seqs(first.results))) == [1, 2, 3, 4, 5]
    assert sorted(set(seqs(second.results))) == [6, 7, 8, 9, 10]


# ----- the daemon waits for a broker that is not there yet -----------------------------------


def test_results_wait_in_the_outbox_until_a_late_broker_starts(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker()
    device, state = new_device("late"), tmp_path / "state"
    # A persistent session subscribed before the daemon starts, then the broker goes away.
    client_id = f"late-sub-{device}"
    Subscriber(broker, result_topic(device), client_id=client_id).start().stop()
    broker.stop()

    args = run_args(digits_bundle, digits / "images" / "val", broker_url=broker.url,
                    device=device, state_dir=state, extra=["--fps", "20", "--loop"])
    with DaemonProcess(args, tmp_path) as daemon:
        assert daemon.wait_for_log("broker unreachable", 20), daemon.tail()
        assert wait_for(lambda: outbox_depth(state) >= 10, 20), daemon.tail()
        assert daemon.alive, daemon.tail()
        waiting = outbox_depth(state)

        broker.start()
        with Subscriber(broker, result_topic(device), client_id=client_id) as sub:
            assert wait_for_seqs(sub, device, waiting, 30), daemon.tail()
            assert daemon.terminate() == 0, daemon.tail()
            last = max(seqs(results(sub, device)))
            assert wait_for_seqs(sub, device, last, 10), \
                f"missing {missing(seqs(results(sub, device)), last)[:10]}\n{daemon.tail()}"
    assert outbox_depth(state) == 0


def test_a_finished_run_waits_for_an_absent_broker_before_exiting(
        make_broker: Callable[..., Mosquitto], digits: Path, digits_bundle: Path,
        tmp_path: Path) -> None:
    broker = make_broker()
    device, state, count = new_device("finish"), tmp_path / "state", 10
    client_id = f"finish-sub-{device}"
    Subscriber(broker, result_topic(device), client_id=client_id).start().stop()
    broker.stop()

    args = run_args(digits_bundle, digits / "images" / "val", broker_url=broker.url,
                    device=device, state_dir=state, extra=["--max-frames", str(count)])
    with DaemonProcess(args, tmp_path) as daemon:
        assert wait_for(lambda: outbox_depth(state) >= count, 20), daemon.tail()
        assert daemon.alive, f"exited with {count} results still owed\n{daemon.tail()}"
        broker.start()
        with Subscriber(broker, result_topic(device), client_id=client_id) as sub:
            assert daemon.wait(45) == 0, daemon.tail()
            assert wait_for_seqs(sub, device, count, 10), daemon.tail()
    assert outbox_depth(state) == 0


# ----- exit codes and the other commands ------------------------------------------------------


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def run_exit(*args: str) -> tuple[int, str]:
    result = run_cli("run", *args)
    return result.returncode, result.stderr


def test_a_missing_bundle_exits_2_with_one_line(digits: Path, tmp_path: Path) -> None:
    code, stderr = run_exit("--bundle", str(tmp_path / "nope"), "--source",
                            str(digits / "images" / "val"), "--state-dir", str(tmp_path))
    assert code == 2
    assert "nope" in one_error_line(stderr)


def test_a_corrupt_model_file_exits_2_with_one_line(digits: Path, digits_bundle: Path,
                                                    tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(bytes(range(256)) * 40)
    code, stderr = run_exit("--bundle", str(garbage), "--source",
                            str(digits / "images" / "val"), "--state-dir", str(tmp_path))
    assert code == 2
    assert "garbage.tflite" in one_error_line(stderr)


def test_a_bundle_whose_model_was_modified_exits_2(digits: Path, digits_bundle: Path,
                                                   tmp_path: Path) -> None:
    tampered = copy_bundle(digits_bundle, tmp_path / "tampered")
    model = tampered / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    code, stderr = run_exit("--bundle", str(tampered), "--source",
                            str(digits / "images" / "val"), "--state-dir", str(tmp_path))
    assert code == 2
    assert "sha256" in one_error_line(stderr)


CONFIG = """\
device_id: pi-test
mqtt:
  url: mqtt://127.0.0.1:1
pipelines:
  - name: default
    bundle: {bundle}
    source: {source}
    {extra}
"""


def write_config(path: Path, bundle: Path, source: Path, extra: str = "fps: 10") -> Path:
    path.write_text(CONFIG.format(bundle=bundle, source=source, extra=extra))
    return path


def test_an_unknown_config_key_exits_2_naming_its_line(digits: Path, digits_bundle: Path,
                                                       tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", digits_bundle, digits / "images" / "val",
                          extra="fsp: 10")
    code, stderr = run_exit("--config", str(config), "--state-dir", str(tmp_path))
    assert code == 2
    line = one_error_line(stderr)
    assert "line 8" in line and "fsp" in line and "did you mean 'fps'" in line, line


def test_check_config_accepts_a_good_file(digits: Path, digits_bundle: Path,
                                          tmp_path: Path) -> None:
    config = write_config(tmp_path / "good.yaml", digits_bundle, digits / "images" / "val")
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "pi-test" in result.stdout


@pytest.mark.parametrize(("extra", "words"), [
    ("fsp: 10", ["line 8", "did you mean 'fps'"]),
    ("fps: -1", ["line 8", "fps"]),
    ("publish: {mode: evry}", ["line 8", "did you mean 'every'"]),
])
def test_check_config_refuses_a_bad_file(digits: Path, digits_bundle: Path, tmp_path: Path,
                                         extra: str, words: list[str]) -> None:
    config = write_config(tmp_path / "bad.yaml", digits_bundle, digits / "images" / "val",
                          extra=extra)
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    for word in words:
        assert word in line, line


def test_check_config_says_a_missing_bundle_is_waited_for(digits: Path, tmp_path: Path) -> None:
    # A fresh install names the bundle a deploy will bring: the pipeline waits for it.
    config = write_config(tmp_path / "c.yaml", tmp_path / "no-bundle", digits / "images" / "val")
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "no-bundle does not exist yet; the pipeline waits for one from deploy" in result.stdout


def test_info_describes_the_bundle(digits_bundle: Path) -> None:
    manifest = json.loads((digits_bundle / "manifest.json").read_text())
    text = run_cli("info", str(digits_bundle))
    assert text.returncode == 0, text.stderr
    assert "digits" in text.stdout and manifest["sha256"] in text.stdout
    data = json.loads(run_cli("info", "--json", str(digits_bundle)).stdout)
    assert data["name"] == "digits" and data["sha256"] == manifest["sha256"]
    assert data["integrity"] == "ok"
    assert data["inputs"][0]["shape"] == manifest["input"]["shape"]


def test_bench_reports_latency_as_json(digits_bundle: Path) -> None:
    result = run_cli("bench", str(digits_bundle), "--frames", "20", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["frames"] == 20
    for key in ("invoke_ms", "end_to_end_ms"):
        assert data[key]["p50"] <= data[key]["p95"] <= data[key]["p99"], data
    assert data["fps"] > 0 and data["rss_mb"] > 0


def test_service_unit_is_a_notify_service_with_a_watchdog() -> None:
    result = run_cli("service-unit", "--config", "/etc/edge-runtime/config.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Type=notify" in lines
    assert any(re.fullmatch(r"WatchdogSec=\d+", line) for line in lines), result.stdout
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert "run --config /etc/edge-runtime/config.yaml" in exec_start
