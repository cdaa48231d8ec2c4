"""``python -m pemma VERB ...``: the ``pemma`` command (also ``torchrun ... -m pemma VERB ...``)."""

from __future__ import annotations

import sys

from pemma.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
