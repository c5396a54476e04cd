"""Allow ``python -m reports RUN_DIR`` as a shorthand for ``python -m reports.build``."""

import sys

from reports.build import main

sys.exit(main())
