import sys

from segscale.cli import main

sys.exit(main())
