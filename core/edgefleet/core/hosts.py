"""Telling a loopback host from one that other machines reach (no name is resolved).

The agent's endpoint needs no token on loopback, the agent's settings check the same, and
``hub broker-config`` warns when devices would be told to connect to the hub's loopback:
one rule for all three.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; hostnames are not resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
