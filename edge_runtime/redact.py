"""The one place secrets are taken out of what is shown: sources, URLs, errors, log lines.

A camera URL (``rtsp://user:pass@cam/...``) or a broker URL (``mqtt://user:pass@host``) may carry
a password in its user info or in a query parameter. Everything the daemon publishes (status,
metrics) or logs, and every error the CLIs print, goes through :func:`redact` first.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://user:PASSWORD@host — the password may hold ':' or '@' (up to the last '@' before the
# path), never '/' or whitespace.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^/\s]*@")
# ?password=…, &access_token=…, ;api_key=… and the like.
_SECRET_PARAM = re.compile(
    r"(?P<head>[?&;][\w.-]*(?:pass(?:word|wd)?|pwd|token|secret|api[_-]?key|auth)[\w.-]*=)"
    r"[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every URL password and secret query value replaced by ``***``.

    >>> redact("stream rtsp://admin:hunter2@cam/live?token=abc&x=1")
    'stream rtsp://admin:***@cam/live?token=***&x=1'
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['head']}{MASK}", text)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line, tracebacks included, went through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
