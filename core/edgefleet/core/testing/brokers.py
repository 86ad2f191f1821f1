"""Real MQTT brokers for tests: a mosquitto subprocess and an in-thread amqtt broker.

Invariants:

- A broker listens on 127.0.0.1 only, on a port chosen when it is created;
  ``restart()`` comes back on the same port so clients can reconnect.
- ``start()`` returns only once the port accepts TCP connections, or raises:
  mosquitto a ``RuntimeError`` carrying the tail of its log, amqtt a
  ``TransportError`` saying why (amqtt missing, port in use, refused config).
- Everything a mosquitto instance writes (config, log, persistence) stays in
  its ``workdir``; the system broker on 1883 is never touched.

``make_test_pki`` makes throwaway certificates for TLS tests; it is test-only and
uses short-lived EC keys.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from edgefleet.core.mqtt.amqtt_runner import AmqttRunner

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


MOSQUITTO_ENV = "EDGEFLEET_MOSQUITTO"


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None.

    ``$EDGEFLEET_MOSQUITTO`` names a specific build (and nothing else is tried
    when it is set); otherwise PATH, then ``/usr/sbin``, which is often not on
    a non-root user's PATH.
    """
    override = os.environ.get(MOSQUITTO_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def mosquitto_password_line(username: str, password: str, *, iterations: int = 101) -> str:
    """One ``password_file`` line in mosquitto 2's ``$7$`` (PBKDF2-SHA512) format."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return (
        f"{username}:$7${iterations}${base64.b64encode(salt).decode()}"
        f"${base64.b64encode(digest).decode()}"
    )


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """Write a mosquitto password file for ``users`` (name -> password)."""
    lines = [mosquitto_password_line(name, password) for name, password in users.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one TLS endpoint: the CA to trust, own certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPki:
    """A throwaway CA with one server identity and any number of client identities."""

    __test__ = False  # not a pytest test class despite the name

    ca: Path
    server: TlsFiles
    clients: dict[str, TlsFiles] = field(default_factory=dict)


def make_test_pki(
    out_dir: Path,
    *,
    server_names: tuple[str, ...] = ("localhost", LOOPBACK),
    clients: tuple[str, ...] = (),
    valid_days: int = 2,
) -> TestPki:
    """Generate a CA, a server certificate for ``server_names`` and client certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=valid_days)
    not_before = now - datetime.timedelta(minutes=5)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("edgefleet test CA"))
        .issuer_name(name("edgefleet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = out_dir / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, common_name: str, sans: list[x509.GeneralName], server: bool) -> TlsFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path = out_dir / f"{stem}.pem"
        key_path = out_dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, key_path)
        return TlsFiles(ca=ca_path, cert=cert_path, key=key_path)

    sans: list[x509.GeneralName] = []
    for entry in server_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            sans.append(x509.DNSName(entry))
    server = issue("server", server_names[0] if server_names else "server", sans, server=True)
    client_files = {
        client: issue(f"client-{client}", client, [], server=False) for client in clients
    }
    return TestPki(ca=ca_path, server=server, clients=client_files)


class MosquittoBroker:
    """A mosquitto subprocess with a generated config, on a fixed loopback port."""

    def __init__(
        self,
        workdir: Path,
        *,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        allow_anonymous: bool = True,
        persistence: bool = False,
        max_queued_messages: int = 100_000,
        port: int | None = None,
        binary: str | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.require_certificate = require_certificate
        self.allow_anonymous = allow_anonymous
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra_config = tuple(extra_config)
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        # A port we picked ourselves may be re-picked if someone grabbed it before
        # the first start; a given port, or one clients already know, may not.
        self._may_repick_port = port is None
        self.binary = binary or find_mosquitto()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def config_text(self) -> str:
        lines = [
            "# generated by edgefleet.core.testing.brokers",
            # Run as whoever started us: as root mosquitto would otherwise switch to
            # the 'mosquitto' user and fail to read files in a private tmp dir.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self.password_file is not None:
            lines.append(f"password_file {Path(self.password_file).resolve()}")
        if self.acl_file is not None:
            lines.append(f"acl_file {Path(self.acl_file).resolve()}")
        # Global options only: everything after "listener" belongs to that listener.
        lines += self.extra_config
        lines.append(f"listener {self.port} {self.host}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca.resolve()}",
                f"certfile {self.tls.cert.resolve()}",
                f"keyfile {self.tls.key.resolve()}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> MosquittoBroker:
        if self.running:
            return self
        if self.binary is None:
            raise RuntimeError(
                "mosquitto not found; run scripts/install-system-deps.sh (make test runs it)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        # mosquitto may share a port with another listener (seen with 2.0 on Linux)
        # and our readiness probe would then talk to the squatter: check first.
        if _port_open(self.host, self.port):
            if not self._may_repick_port:
                raise RuntimeError(f"port {self.port} is already in use; mosquitto not started")
            self.port = free_port()
        self._may_repick_port = False
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the test run must not hit the broker first
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._reap()
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode} on port {self.port}: "
                    f"{self.log_tail()}"
                )
            # "running" is logged once every listener is open.
            if self._logged_since(log_offset, " running") and _port_open(self.host, self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on port {self.port}: {self.log_tail()}")

    def stop(self) -> None:
        """Graceful stop (SIGTERM); mosquitto saves persistence on the way out."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=STOP_TIMEOUT_S)
        self._reap()

    def kill(self) -> None:
        """Crash the broker (SIGKILL): no goodbye to clients, no final persistence save."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)
        self._reap()

    def restart(self) -> MosquittoBroker:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def _reap(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _logged_since(self, offset: int, needle: str) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return needle.encode() in log.read()
        except FileNotFoundError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.host}:{self.port}, running={self.running})"


class AmqttBroker:
    """amqtt's broker on its own event loop in a daemon thread (MQTT 3.1.1, anonymous).

    amqtt has no shared subscriptions, which is why the hub makes them optional.
    The thread and loop are :class:`~edgefleet.core.mqtt.amqtt_runner.AmqttRunner`'s;
    a failed ``start()`` raises its ``TransportError``.
    """

    def __init__(self, port: int | None = None) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self._runner = AmqttRunner(self._config(), thread_name="amqtt-broker")

    @property
    def running(self) -> bool:
        return self._runner.running

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # No $SYS publisher and no packet logger: quieter and fewer background tasks.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    def start(self) -> AmqttBroker:
        self._runner.start(START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        self._runner.stop(STOP_TIMEOUT_S)

    def __enter__(self) -> AmqttBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"AmqttBroker({self.host}:{self.port}, running={self.running})"
