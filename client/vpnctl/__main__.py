"""`python -m vpnctl`: the same as the vpnctl command."""

from vpnctl.program import run

run()
