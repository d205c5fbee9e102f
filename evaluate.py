"""Evaluate collaborative inference on val or test (the same command as ``ate-evaluate``).

    python evaluate.py --generalist G.ckpt --experts '[runs/experts/]' --data.data_dir DIR --out runs/eval/exp1

The command is ``ask_the_expert.commands.evaluate``; ``python evaluate.py --help`` lists every option.
"""

import sys

from ask_the_expert.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
