import sys

from specref.cli import main

sys.exit(main())
