"""`python -m datamodules.synthesis --config experiments/configs/synthesis/world.yaml`."""

from datamodules.synthesis.runner import main

if __name__ == "__main__":
    main()
