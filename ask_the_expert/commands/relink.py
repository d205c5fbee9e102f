"""After ``wandb sync`` of offline runs: declare each run's input artifacts, rebuilding the lineage of an online run.

    ate-relink ENTITY/PROJECT/RUN_ID [ENTITY/PROJECT/RUN_ID ...]

Offline, W&B refuses ``use_artifact``; an offline evaluation or export therefore records the names of the checkpoints
it read (``lineage.inputs`` in its config, ask_the_expert.tracking.artifacts), and this command links them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ask_the_expert.tracking.artifacts import relink
from ask_the_expert.utils.cli import SuiteParser, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and link the runs; 0 on success, 2 on bad input (message printed, no traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)

    def command() -> None:
        parser = SuiteParser(prog="ate-relink", description=__doc__.split("\n\n")[0], exit_on_error=False)
        parser.add_argument("runs", nargs="+", help="ENTITY/PROJECT/RUN_ID of each synced run.")
        relink(parser.parse_args(args).runs)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
