"""`python -m mpota`: the same CLI as the `mpota` command."""
import sys

from .cli import main

sys.exit(main())
