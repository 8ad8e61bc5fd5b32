"""``edge-runtime info``: what a bundle (or bare .tflite) is, and whether it is intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends import load_backend
from .bundles.resolve import resolve_bundle


def bundle_info(path: Path) -> dict[str, Any]:
    bundle = resolve_bundle(path)
    backend = load_backend(bundle.model_path, threads=1)
    try:
        data: dict[str, Any] = {
            "path": str(path), "name": bundle.name, "version": bundle.version,
            "task": bundle.task, "sha256": bundle.sha256, "integrity": "ok",
            "size_bytes": bundle.model_path.stat().st_size,
            "labels": len(bundle.labels), "runtime": backend.runtime,
            "inputs": [i.to_manifest() for i in backend.inputs],
            "outputs": [o.to_manifest() for o in backend.outputs],
            "ops": len(backend.ops()),
        }
    finally:
        backend.close()
    if bundle.manifest is not None:
        m = bundle.manifest
        data.update(created=m.created, profile=m.profile.get("name"),
                    input=m.input.model_dump(), metrics=m.metrics, gate=m.gate,
                    signed=(bundle.root is not None
                            and (bundle.root / "signature.json").is_file()))
    else:
        data["note"] = "bare model: no manifest; describe it with --labels/--task/--input-*"
    return data


def format_info(data: dict[str, Any]) -> str:
    lines = [f"{data['name']} v{data['version']}  ({data['task']})"]
    for key in ("path", "profile", "created", "sha256", "integrity", "signed", "size_bytes",
                "labels", "runtime", "ops"):
        if key in data:
            lines.append(f"  {key:<12} {data[key]}")
    for tensor in data["inputs"]:
        lines.append(f"  input        {tensor['shape']} {tensor['dtype']} q={tensor['quantization']}")
    if "input" in data:
        i = data["input"]
        lines.append(f"  preprocess   {i['color']} {i['resize']} mean={i['mean']} std={i['std']}")
    for tensor in data["outputs"]:
        lines.append(f"  output       {tensor['shape']} {tensor['dtype']}")
    metrics = data.get("metrics") or {}
    if metrics:
        lines.append(f"  accuracy     float {metrics.get('float_accuracy')}  quantized "
                     f"{metrics.get('int8_accuracy')}  agreement {metrics.get('agreement')}")
    gate = data.get("gate") or {}
    if gate:
        lines.append(f"  gate         {'passed' if gate.get('passed') else 'FAILED'} "
                     f"(drop {gate.get('accuracy_drop')} points)")
    if "note" in data:
        lines.append(f"  note         {data['note']}")
    return "\n".join(lines)
