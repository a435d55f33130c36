"""mmsr_peft: ID-agnostic multi-modal sequential recommendation with parameter-efficient transfer."""

__version__ = "0.1.0"

from .data.catalog import Catalog
from .domains import DOMAINS, load_domain, load_folder
from .model import MMSRConfig, MMSRModel, MMSROutput, Recommendations

__all__ = [
    "DOMAINS",
    "Catalog",
    "MMSRConfig",
    "MMSRModel",
    "MMSROutput",
    "Recommendations",
    "load_domain",
    "load_folder",
]
