"""edgefleet core: the contracts shared by packager, agent and hub.

Bundle format, signing and trust, device profiles, drift statistics and the
wire protocol live here. Core imports no role package and nothing heavier than
numpy and cryptography.
"""

__version__ = "0.1.0"
