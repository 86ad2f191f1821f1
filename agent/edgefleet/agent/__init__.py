"""edgefleet agent: the daemon on Raspberry Pi-class devices.

Imports only onnxruntime, numpy, paho-mqtt, cryptography, click and the
standard library (checked by import-linter in the test suite).
"""

import os

# Offline means offline. onnxruntime (1.32 on Linux) writes a device id and an
# event queue under ~/.cache/Microsoft/ and looks up a telemetry host in DNS
# 10-30 s after a session opens; ort.disable_telemetry_events() does not stop
# that, this variable does, and only if it is set before the library loads.
# Every agent entry point (the daemon, `agent predict`, the verification child
# and anything else under edgefleet.agent) imports this package first, and the
# children it spawns inherit the variable.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
