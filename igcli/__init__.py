"""igcli: Integrated Gradients attributions from the command line."""

__version__ = "0.2.1"
