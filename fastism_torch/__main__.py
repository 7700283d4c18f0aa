"""``python -m fastism_torch`` (and ``torchrun -m fastism_torch``): the command-line tool."""
import sys

from .cli import main

sys.exit(main())
