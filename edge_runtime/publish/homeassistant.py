"""Home Assistant MQTT discovery (opt-in): per-pipeline sensors for the last label, its score, the
pipeline's fps, its health verdict (with the reasons as attributes) and estimated accuracy,
available while the device's status topic is not ``offline``."""

from __future__ import annotations

from typing import Any

from edge_runtime.publish.payloads import encode
from edge_runtime.publish.topics import Topics


def discovery_messages(topics: Topics, device: str, pipelines: list[str], version: str,
                       prefix: str = "homeassistant") -> list[tuple[str, bytes]]:
    """(topic, retained payload) pairs announcing every entity of this device."""
    dev = {"identifiers": [f"edge-runtime-{device}"], "name": f"edge-runtime {device}",
           "manufacturer": "edge-runtime", "sw_version": version}
    availability = {
        "availability_topic": topics.status,
        "availability_template": "{{ 'offline' if value_json.state == 'offline' else 'online' }}",
    }
    messages = []
    for p in pipelines:
        result = topics.result(p)
        entities: list[tuple[str, dict[str, Any]]] = [
            ("label", {"name": f"{p} label", "state_topic": result,
                       "value_template": "{{ (value_json.predictions or value_json.detections "
                                         "or [{}])[0].label | default('none') }}",
                       "icon": "mdi:tag"}),
            ("score", {"name": f"{p} score", "state_topic": result,
                       "value_template": "{{ (value_json.predictions or value_json.detections "
                                         "or [{}])[0].score | default(0) }}",
                       "state_class": "measurement"}),
            ("fps", {"name": f"{p} fps", "state_topic": topics.metrics,
                     "value_template": f"{{{{ value_json.pipelines['{p}'].fps }}}}",
                     "unit_of_measurement": "fps", "state_class": "measurement"}),
            ("health", {"name": f"{p} health", "state_topic": topics.pipeline_topic(p, "health"),
                        "value_template": "{{ value_json.verdict }}",
                        "json_attributes_topic": topics.pipeline_topic(p, "health"),
                        "json_attributes_template": "{{ {'reasons': value_json.reasons, "
                                                    "'estimated_accuracy': "
                                                    "value_json.estimated_accuracy} | tojson }}",
                        "icon": "mdi:heart-pulse"}),
            ("estimated_accuracy", {
                "name": f"{p} estimated accuracy",
                "state_topic": topics.pipeline_topic(p, "health"),
                "value_template": "{{ ((value_json.estimated_accuracy or 0) * 100) | round(1) }}",
                "unit_of_measurement": "%", "state_class": "measurement"}),
        ]
        for key, config in entities:
            uid = f"edge_{device}_{p}_{key}".replace("-", "_").replace(".", "_")
            payload = {**config, **availability, "unique_id": uid, "object_id": uid,
                       "device": dev}
            messages.append((f"{prefix}/sensor/{uid}/config", encode(payload)))
    return messages
