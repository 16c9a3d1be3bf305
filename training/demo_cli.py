"""The crossview-demo console script: the demo with a clear message where the extras are missing.

The demo trains a model, so it needs the [train] and [replay] extras (torch, timm, filterpy, ...);
a runtime-only install (`pip install '.[ros]'`) gets one line saying what to install instead of
an ImportError traceback. This is the one place that imports the demo late, for that reason.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PROG = "crossview-demo"
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from crossview_training.demo import main as demo_main
    except ModuleNotFoundError as exc:
        print(f"{PROG}: error: {exc}; the demo trains a model: install the extras with "
              "pip install '.[ros,train,replay]'", file=sys.stderr)
        return EXIT_USAGE
    return demo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
