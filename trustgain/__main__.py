import sys

from trustgain.cli.main import main

sys.exit(main())
