"""`python -m vpnd`."""

import sys

from vpnd.service import main

sys.exit(main())
