"""`python -m devstack`: see :mod:`devstack.stack`."""
import sys

from devstack.stack import main

sys.exit(main())
