"""The fleet console: the service layer shared by the hub commands, the REST API and the dashboard."""
