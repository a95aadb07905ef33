"""``python -m corec_node`` is the same as the ``corec-node`` command."""

import sys

from corec_node.cli import main

if __name__ == "__main__":
    sys.exit(main())
