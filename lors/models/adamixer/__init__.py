"""AdaMixer query-based detector (plain torch) with dense and LORS decoders."""
from .mixing import AdaptiveMixing

__all__ = ["AdaptiveMixing"]
