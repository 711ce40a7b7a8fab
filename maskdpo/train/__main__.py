"""`python -m maskdpo.train` (what the deepspeed and torchrun launchers start on every rank)."""

import sys

from .cli import main

sys.exit(main())
