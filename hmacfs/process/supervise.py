"""The supervisor's process: `python -S -P .../hmacfs/process/supervise.py --config FILE
ROOT...`, which the starting command execs (`hmacfs.process.planner.start_supervisor`).

Without the site packages (-S) and without the script's directory on the path (-P): the
ROOTs (where the starting command found hmacfs and sdnotify) are added after the standard
library, and the supervisor (`hmacfs.process.supervisor.main`) imports from them what it
needs. The configuration file is named for `ps` and `systemctl status`; the supervisor
takes it from its plan.
"""

import sys

if __name__ == "__main__":
    for root in sys.argv[3:]:
        if root not in sys.path:
            sys.path.append(root)
    from hmacfs.process.supervisor import main

    sys.exit(main())
