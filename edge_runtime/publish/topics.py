"""The MQTT topic tree of one device: ``PREFIX/DEVICE/...``."""

from __future__ import annotations

_FORBIDDEN = frozenset("/+#\x00")
REPLY_SUFFIX = "reply"


def check_level(kind: str, value: str) -> str:
    """Return ``value`` if it can be one topic level, else raise a one-line ValueError."""
    if not value:
        raise ValueError(f"{kind} must not be empty")
    bad = sorted(_FORBIDDEN.intersection(value))
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ValueError(f"{kind} {value!r} must not contain {shown}")
    return value


class Topics:
    """Builds and parses the topics of one device.

    >>> t = Topics("pi-1")
    >>> t.result("default"), t.status, t.cmd_filter
    ('edge/pi-1/default/result', 'edge/pi-1/status', 'edge/pi-1/cmd/#')
    """

    def __init__(self, device: str, prefix: str = "edge") -> None:
        self.device = check_level("device id", device)
        self.prefix = check_level("topic prefix", prefix)
        self._base = f"{prefix}/{device}"
        self.status = f"{self._base}/status"
        self.metrics = f"{self._base}/metrics"
        self.cmd_filter = f"{self._base}/cmd/#"
        self._cmd_base = f"{self._base}/cmd/"

    def result(self, pipeline: str) -> str:
        return f"{self._base}/{check_level('pipeline name', pipeline)}/result"

    def cmd(self, verb: str) -> str:
        return self._cmd_base + check_level("command verb", verb)

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
