"""A module that prints on import, and holds one working optimizer."""

import torch

print("import_print says hello on stdout")


class Chatty(torch.optim.SGD):
    """Plain SGD."""
