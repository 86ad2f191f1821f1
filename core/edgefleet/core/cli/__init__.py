"""The `edgefleet` command line: root group, lazy role groups, output and exit codes."""
