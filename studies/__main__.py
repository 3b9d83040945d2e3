"""``python -m studies`` = ``soensim-study``."""
import sys

from .cli import main

sys.exit(main())
