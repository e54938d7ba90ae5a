"""`python -m liger.cli` (and `torchrun ... -m liger.cli`): the `liger` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
