"""``python -m tgate.check "CMD"``: the same as ``tgate check-handler "CMD"``."""

import sys

from . import main

raise SystemExit(main(sys.argv[1:]))
