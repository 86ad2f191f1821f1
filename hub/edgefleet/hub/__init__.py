"""edgefleet hub: enrollment, MQTT distribution, rollouts, telemetry and drift."""
