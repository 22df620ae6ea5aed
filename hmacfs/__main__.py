"""`python -m hmacfs`: the same as the `hmac-file-server` command."""

import sys

from hmacfs.cli import main

sys.exit(main())
