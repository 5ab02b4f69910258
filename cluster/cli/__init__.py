"""Command lines over the library: flags that take their defaults (and help) from the config
dataclasses, and the training CLI behind `jobs/train_resnet.py`."""
