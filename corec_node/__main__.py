"""``python -m corec_node`` is the same as the ``corec-node`` command."""

import sys

from corec_node.cli import main

sys.exit(main())
