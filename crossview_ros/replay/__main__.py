"""python -m crossview_ros.replay: the crossview-replay command."""

import sys

from crossview_ros.replay.cli import main

sys.exit(main())
