"""Test doubles and real brokers shipped with edgefleet, for its own tests and for users'.

- :mod:`edgefleet.core.testing.brokers` — ``MosquittoBroker`` (a real mosquitto
  subprocess with a generated config), ``AmqttBroker`` (amqtt in a thread),
  ``free_port``, ``TlsFiles`` and ``make_test_pki`` for TLS tests, and functions
  that write mosquitto password files.
- :mod:`edgefleet.core.testing.postgres` — ``PostgresServer``: initdb and postgres from
  the distribution's binaries in a temp dir on a free loopback port, as an unprivileged
  user when run as root.
- :mod:`edgefleet.core.testing.clock` — ``FakeClock``, a settable ``now`` source.

Nothing is imported here eagerly: importing this package costs nothing and
pulls in neither amqtt nor cryptography.
"""
