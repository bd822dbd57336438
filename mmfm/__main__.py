import sys

from mmfm.cli import main

sys.exit(main())
