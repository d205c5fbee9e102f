"""Train, validate and test the suite's models through LightningCLI (the same command as ``ate-train``).

    python train.py fit -c configs/generalist.yaml [-c configs/trainer/gpu.yaml] [--data.data_dir DIR]

The command is ``ask_the_expert.commands.train``; ``python train.py --help`` lists every option.
"""

import sys

from ask_the_expert.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
