"""`python -m vpnctl`: the same as the vpnctl command."""

import sys

from vpnctl.cli import main

sys.exit(main())
