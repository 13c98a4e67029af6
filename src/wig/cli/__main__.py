"""``python -m wig.cli``: the `wig` command line (as ``python -m wig``)."""

import sys

from wig.cli import main

sys.exit(main())
