"""The local Open Inference Protocol v2 endpoint (docs/agent-endpoint.md).

``EndpointServer(EndpointConfig(...), serving_set, telemetry_sink).start()``
serves every model of a :class:`~edgefleet.agent.model.serving.ServingSet` over
HTTP/1.1 on 127.0.0.1 by default. Layers, outermost first: ``server`` (the
selectors loop, listening sockets, worker pool), ``connection`` (one client
socket: buffering, back-pressure, request order), ``http11`` (sans-IO framing),
``app`` (routes, auth, jobs), ``oip`` (JSON <-> numpy), ``metrics`` (Prometheus
text); ``budget`` (pure) derives the request limits from the device profile's
memory budget and counts the decoded tensor bytes in flight.
"""

from __future__ import annotations

from edgefleet.agent.endpoint.config import EndpointConfig, is_loopback_host
from edgefleet.agent.endpoint.server import EndpointServer

__all__ = ["EndpointConfig", "EndpointServer", "is_loopback_host"]
