"""The likely cause of a failed MQTT connection, in one line an operator can act on.

A hub or agent that cannot connect retries forever; what it logs is often all an
operator sees. The raw errors say what happened (``connection closed before CONNACK``,
``IP address mismatch``, ``Not authorized``) but not what to change. :func:`likely_cause`
maps them to the setting to check. Pure: it looks only at the message text and whether
TLS was on, so it is easy to test against the errors real brokers produce.
"""

from __future__ import annotations

# (substring of the error, TLS on?, cause). The first match wins; None matches either.
_CAUSES: tuple[tuple[str, bool | None, str], ...] = (
    (
        "IP address mismatch",
        True,
        "the broker's certificate does not name this address: connect to a name given "
        "to `hub broker-config --tls-host` (or the --bind address)",
    ),
    (
        "Hostname mismatch",
        True,
        "the broker's certificate does not name this host: connect to a name given "
        "to `hub broker-config --tls-host`",
    ),
    (
        "certificate verify failed",
        True,
        "the broker's certificate is not signed by the configured CA file (a CA from "
        "another broker-config directory?)",
    ),
    (
        "WRONG_VERSION_NUMBER",
        True,
        "the broker does not speak TLS on this port (use the TLS listener's port, or no CA)",
    ),
    (
        "wrong version number",
        True,
        "the broker does not speak TLS on this port (use the TLS listener's port, or no CA)",
    ),
    (
        "before CONNACK",
        False,
        "the broker may expect TLS on this port: set the CA file (hub: broker.tls_ca, "
        "agent: mqtt.ca_file) and the TLS port",
    ),
    (
        "before CONNACK",
        True,
        "the broker closed the TLS connection: check the port and that it is the TLS listener",
    ),
    (
        "Not authorized",
        None,
        "wrong username or password, or the broker has not reread its password file "
        "(rerun `hub broker-config` and send SIGHUP to mosquitto)",
    ),
    (
        "Bad user name or password",
        None,
        "wrong username or password, or the broker has not reread its password file "
        "(rerun `hub broker-config` and send SIGHUP to mosquitto)",
    ),
    (
        "Connection refused",
        None,
        "nothing listens on this address and port (is the broker running, and bound "
        "to an address this machine reaches?)",
    ),
)


def likely_cause(message: str, tls: bool) -> str | None:
    """The operator's next step for a connection failure message, or None if unknown."""
    for needle, when_tls, cause in _CAUSES:
        if needle in message and (when_tls is None or when_tls == tls):
            return cause
    return None


def describe_failure(message: str, tls: bool) -> str:
    """``message`` with its likely cause appended, still one line."""
    cause = likely_cause(message, tls)
    flat = " ".join(message.split())
    return flat if cause is None else f"{flat} — likely cause: {cause}"
