"""``python -m canaryd.ctl``: canaryctl."""

from canaryd.ctl.main import main

raise SystemExit(main())
