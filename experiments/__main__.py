"""`python -m experiments fit --config exp.yaml`: see `experiments.cli`."""

from experiments.cli import main

if __name__ == "__main__":
    main()
