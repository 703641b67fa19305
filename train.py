"""Train, validate, test or predict any task: `python train.py --task emotion fit [LightningCLI args]`."""
from common.cli import main

if __name__ == "__main__":
    main()
