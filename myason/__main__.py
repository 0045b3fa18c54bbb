"""`python3 -m myason` runs the command line."""
from myason.cli import main

raise SystemExit(main())
