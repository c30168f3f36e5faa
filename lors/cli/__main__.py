"""``python -m lors.cli ...`` (what torchrun runs): the ``lors`` command line."""
import sys

from .main import main

sys.exit(main())
