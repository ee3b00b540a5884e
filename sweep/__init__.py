"""sweep: hyperparameter sweeps for fine-tuning ResNet image classifiers, coordinated by one SQL database."""

__version__ = "0.1.0"
