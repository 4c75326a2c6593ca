"""An optimizer package that talks while it loads, the way bitsandbytes does on some CPUs."""

import ctypes
import logging
import sys
import warnings

from torch.optim import SGD

print("noisy_optim: a banner on stdout")
print("noisy_optim: a note on stderr", file=sys.stderr)
logging.getLogger("noisy_optim").warning("Failed to load CPU gemm_4bit_forward from kernels-community: no kernels")
warnings.warn("noisy_optim: an old API", UserWarning, stacklevel=1)
ctypes.CDLL(None).puts(b"noisy_optim: from C")


class NoisySGD(SGD):
    """SGD from a package that printed on import."""
