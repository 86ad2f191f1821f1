"""edgefleet agent: the daemon on Raspberry Pi-class devices.

Imports only onnxruntime, numpy, paho-mqtt, cryptography, click and the
standard library (checked by import-linter in the test suite).
"""
