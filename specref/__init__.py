"""specref: the reference implementation of speculative cascades.

Pure math lives in :mod:`specref.dists`, :mod:`specref.rules`, :mod:`specref.genspec`,
:mod:`specref.verify`, :mod:`specref.optimal` and :mod:`specref.exact`; nothing there imports a model
library. Model plumbing (decoder, zoo, logging) and the CLI build on top.
"""

__version__ = "0.1.0"
