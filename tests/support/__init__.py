"""Shared test support: waiting, bundles, agents, brokers, and the marker guard."""
