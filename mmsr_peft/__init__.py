"""mmsr_peft: ID-agnostic multi-modal sequential recommendation with parameter-efficient transfer."""

__version__ = "0.1.0"

import logging

# bitsandbytes (optional; peft imports it whenever it is installed) logs at import time that the `kernels` package,
# a faster CPU 4-bit matmul, is missing, and then uses its own kernel: nothing to act on, even for a run that
# quantizes nothing. That one notice is dropped; everything else the logger says gets through.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in str(record.msg))

from .data.catalog import Catalog  # noqa: E402 (after the filter: these imports import peft)
from .domains import DOMAINS, load_domain, load_folder  # noqa: E402
from .model import MMSRConfig, MMSRModel, MMSROutput, Recommendations  # noqa: E402
from .side import SideAdapterConfig  # noqa: E402

__all__ = [
    "DOMAINS",
    "Catalog",
    "MMSRConfig",
    "MMSRModel",
    "MMSROutput",
    "Recommendations",
    "SideAdapterConfig",
    "load_domain",
    "load_folder",
]
