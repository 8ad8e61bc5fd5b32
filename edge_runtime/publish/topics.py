"""The MQTT topic tree of one device: ``PREFIX/DEVICE/...``, and the one rule for its names.

The prefix, device ids, pipeline names and group names each become exactly one topic level, so
every place that takes one (config, flags, ``deploy --device``) checks it with
:func:`topic_level`. Pipeline names also go through :func:`pipeline_name`, which keeps them off
the device's own topics (``edge/D/cmd/result`` would land in the command subscription).
"""

from __future__ import annotations

import re

from edge_runtime.errors import EdgeError

REPLY_SUFFIX = "reply"
RESERVED_PIPELINE_NAMES = ("cmd", "status", "metrics", "health", "shadow")
_LEVEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TopicNameError(EdgeError, ValueError):
    """A name that cannot be one topic level; one line naming it."""


def topic_level(kind: str, value: str) -> str:
    """Return ``value`` if it is a usable topic level, else raise :class:`TopicNameError`.

    1-64 letters, digits, ``-``, ``_`` or ``.``, starting with a letter or digit: no ``/`` (it
    would add levels), no ``+`` or ``#`` (wildcards), no ``$`` (broker topics), no spaces.
    """
    if not isinstance(value, str) or not _LEVEL.fullmatch(value):
        raise TopicNameError(
            f"{kind} {value!r} must be 1-64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit (it is one MQTT topic level)")
    return value


def pipeline_name(value: str) -> str:
    """A pipeline name: a topic level that is not one of the device's own topics."""
    topic_level("pipeline name", value)
    if value in RESERVED_PIPELINE_NAMES:
        raise TopicNameError(
            f"pipeline name {value!r} is reserved for the device's own topics "
            f"({', '.join(RESERVED_PIPELINE_NAMES)}); choose another")
    return value


class Topics:
    """Builds and parses the topics of one device.

    >>> t = Topics("pi-1")
    >>> t.result("default"), t.status, t.cmd_filter
    ('edge/pi-1/default/result', 'edge/pi-1/status', 'edge/pi-1/cmd/#')
    """

    def __init__(self, device: str, prefix: str = "edge") -> None:
        self.device = topic_level("device id", device)
        self.prefix = topic_level("topic prefix", prefix)
        self._base = f"{prefix}/{device}"
        self.status = f"{self._base}/status"
        self.metrics = f"{self._base}/metrics"
        self.cmd_filter = f"{self._base}/cmd/#"
        self._cmd_base = f"{self._base}/cmd/"

    def result(self, pipeline: str) -> str:
        return f"{self._base}/{pipeline_name(pipeline)}/result"

    def pipeline_topic(self, pipeline: str, kind: str) -> str:
        """``edge/D/P/health``, ``edge/D/P/shadow``: a pipeline's own reports."""
        return f"{self._base}/{pipeline_name(pipeline)}/{kind}"

    def cmd(self, verb: str) -> str:
        # A verb comes off the wire (the reply goes back on its topic), so only what would break
        # the topic is refused here, not everything a chosen name may not contain.
        if not verb or any(c in verb for c in "/+#\0"):
            raise TopicNameError(f"command verb {verb!r} is not one topic level")
        return self._cmd_base + verb

    def reply(self, verb: str) -> str:
        return f"{self.cmd(verb)}/{REPLY_SUFFIX}"

    def verb_of(self, topic: str) -> str | None:
        """The verb of a command topic; None for replies and topics that are not our commands."""
        if not topic.startswith(self._cmd_base):
            return None
        verb = topic[len(self._cmd_base) :]
        if not verb or "/" in verb:
            return None
        return verb

    def __repr__(self) -> str:
        return f"Topics(device={self.device!r}, prefix={self.prefix!r})"
