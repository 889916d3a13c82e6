"""`python -m encoderforge ...` and `torchrun -m encoderforge pretrain ...` run the main CLI."""

from encoderforge.cli.app import main

if __name__ == "__main__":
    main()
