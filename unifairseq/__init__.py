"""unifairseq: the unified view of parameter-efficient transfer learning (He et al., ICLR 2022)
as a fairseq extension. Importing the package registers its models with fairseq."""
__version__ = "0.1.0"

from . import serialization  # noqa: F401  (allow-lists fairseq checkpoint types for torch.load)
from .config import PRESETS, DeltaConfig, DeltaConfigError  # noqa: F401
