import sys

from rotation_tools.cli import main

sys.exit(main())
