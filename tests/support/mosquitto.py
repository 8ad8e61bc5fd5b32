"""A real Mosquitto for tests, and a subscriber that collects what reaches it.

``Mosquitto`` writes a config into a work directory and runs ``/usr/sbin/mosquitto`` on a free
loopback port, with persistence on (a ``stop()``/``start()`` keeps persistent sessions and
retained messages), optionally a password file and a TLS listener with a freshly made CA, which
may also require a client certificate signed by that CA (``require_client_cert=True``).

It is also the pytest plugin (``tests/conftest.py`` loads it) that gives the ``mosquitto`` and
``make_mosquitto`` fixtures; tests import the helpers as ``from support.mosquitto import …``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.publish.settings import MqttSettings, parse_mqtt_url

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path(shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd")
HOST = "127.0.0.1"
START_TIMEOUT_S = 5.0


def mosquitto_available() -> bool:
    return MOSQUITTO.is_file() and os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path


class Mosquitto:
    """One Mosquitto process on ``127.0.0.1:port``; restartable on the same port."""

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str] | None = None,
        tls: bool = False,
        port: int | None = None,
        require_client_cert: bool = False,
    ) -> None:
        if require_client_cert and not tls:
            raise ValueError("require_client_cert needs tls=True")
        self.require_client_cert = require_client_cert
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.users = dict(users or {})
        self.tls_files = make_tls_files(self.workdir / "tls") if tls else None
        self.log_file = self.workdir / "mosquitto.log"
        self.config_file = self._write_config()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls_files else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def settings(self, **overrides: Any) -> MqttSettings:
        """Client settings for this broker (its CA when TLS is on)."""
        if self.tls_files is not None:
            overrides.setdefault("ca_file", self.tls_files.ca_file)
        return parse_mqtt_url(self.url, **overrides)

    def start(self) -> None:
        if self.running:
            return
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config_file)], stdout=log, stderr=log
            )
        self._wait_until_accepting()

    def stop(self) -> None:
        """SIGTERM and wait: Mosquitto saves its persistence file on the way out."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_until_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept on port {self.port}:\n{self.log_tail()}")

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence true",
            f"persistence_location {data}/",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to 'mosquitto' and cannot read files
        if self.users:
            lines.append(f"password_file {self._write_passwords()}")
        if self.tls_files is not None:
            lines += [
                f"cafile {self.tls_files.ca_file}",
                f"certfile {self.tls_files.cert_file}",
                f"keyfile {self.tls_files.key_file}",
            ]
            if self.require_client_cert:
                lines += ["require_certificate true"]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _write_passwords(self) -> Path:
        path = self.workdir / "passwords"
        path.unlink(missing_ok=True)
        for index, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [str(MOSQUITTO_PASSWD), *create, "-b", str(path), user, password],
                check=True, capture_output=True,
            )
        return path


def make_tls_files(directory: Path, names: Iterable[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A throw-away CA, a server certificate it signed for ``names`` and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-runtime test CA")])
    ca_cert = _certificate(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True, names=())
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                     directory / "client.pem", directory / "client.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_file, key_file, common_name, usage, leaf_names in (
        (files.cert_file, files.key_file, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
         tuple(names)),
        (files.client_cert_file, files.client_key_file, "edge-test-client",
         ExtendedKeyUsageOID.CLIENT_AUTH, ()),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = _certificate(subject, key.public_key(), ca_name, ca_key, ca=False,
                            names=leaf_names, usage=usage)
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ))
    return files


def _certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    names: tuple[str, ...],
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that collects every message on ``topics``, thread-safely.

    ``broker`` is a :class:`Mosquitto` or anything with ``host`` and ``port`` (an embedded broker).

    By default it keeps a persistent session (clean_session False, QoS 1), so messages published
    while it or the broker was away reach it once both are back.
    """

    def __init__(
        self,
        broker: Mosquitto | Any,
        topics: str | Iterable[str],
        client_id: str | None = None,
        clean_session: bool = False,
        username: str | None = None,
        password: str | None = None,
        qos: int = 1,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self._cond = threading.Condition()
        self._received: list[Received] = []
        self._subscribed = threading.Event()
        self._broker = broker
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        if username is not None:
            self.client.username_pw_set(username, password)
        tls_files = getattr(broker, "tls_files", None)
        if tls_files is not None:
            self.client.tls_set(ca_certs=str(tls_files.ca_file),
                                certfile=str(tls_files.client_cert_file),
                                keyfile=str(tls_files.client_key_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 5.0) -> Subscriber:
        self.client.connect(self._broker.host, self._broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            log_tail = getattr(self._broker, "log_tail", lambda: "")
            raise RuntimeError(f"subscriber could not subscribe:\n{log_tail()}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._cond:
            return [m for m in self._received if topic is None or m.topic == topic]

    def payloads(self, topic: str | None = None) -> list[Any]:
        """Decoded JSON payloads, in arrival order."""
        return [m.json() for m in self.messages(topic)]

    def wait_for(self, count: int, timeout: float, topic: str | None = None) -> bool:
        """True once at least ``count`` messages (on ``topic``) have arrived."""
        return self.wait_until(lambda msgs: len(msgs) >= count, timeout, topic)

    def wait_until(
        self, check: Callable[[list[Received]], bool], timeout: float, topic: str | None = None
    ) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                relevant = [m for m in self._received if topic is None or m.topic == topic]
                if check(relevant):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._cond:
            self._received.append(Received(message.topic, bytes(message.payload), message.retain))
            self._cond.notify_all()


def read_retained(
    broker: Mosquitto,
    topic: str,
    timeout: float = 2.0,
    username: str | None = None,
    password: str | None = None,
) -> Any | None:
    """The retained message on ``topic`` as decoded JSON, or None if there is none."""
    sub = Subscriber(broker, topic, clean_session=True, username=username, password=password)
    with sub:
        if not sub.wait_until(lambda msgs: any(m.retain for m in msgs), timeout):
            return None
        return next(m for m in sub.messages() if m.retain).json()


def publish_once(
    broker: Mosquitto,
    topic: str,
    payload: bytes,
    qos: int = 1,
    retain: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """Connect, publish one message, wait for the broker to take it, disconnect."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    if username is not None:
        client.username_pw_set(username, password)
    if broker.tls_files is not None:
        client.tls_set(ca_certs=str(broker.tls_files.ca_file),
                       certfile=str(broker.tls_files.client_cert_file),
                       keyfile=str(broker.tls_files.client_key_file))
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


class TcpProxy:
    """A loopback TCP relay that can swallow traffic and cut its connections: a network cut.

    ``blackhole(True)`` keeps connections open but forwards nothing (sent messages stay in
    flight, unacknowledged); ``cut()`` closes every open connection at once.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._swallow = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server((HOST, self.port))
        self._closed = False

    def start(self) -> TcpProxy:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def blackhole(self, on: bool) -> None:
        if on:
            self._swallow.set()
        else:
            self._swallow.clear()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.cut()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                if self._closed:
                    return
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._swallow.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# ----- the pytest plugin -------------------------------------------------------------------


def require_mosquitto() -> None:
    """Skip (or fail on CI) when Mosquitto is not installed."""
    if mosquitto_available():
        return
    reason = f"{MOSQUITTO} not found: apt-get install -y mosquitto mosquitto-clients"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """A factory: ``make_mosquitto(users={...}, tls=True)`` gives a started broker."""
    require_mosquitto()
    brokers: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}", **kwargs)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(make_mosquitto: Callable[..., Mosquitto]) -> Mosquitto:
    """A started anonymous Mosquitto with persistence."""
    return make_mosquitto()
