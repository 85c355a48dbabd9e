"""FALCON Explorer: size, fit and try FALCON depthwise-separable compression of CNNs.

The library never imports streamlit. Entry points:

* :mod:`falcon.convtypes` — the registry of conv types (closed-form costs, modules, hyper-parameters)
* :mod:`falcon.counting` — counting parameters and MACs on real modules, under a declared convention
* :mod:`falcon.models`, :mod:`falcon.sizing` — the paper's models, torchvision's zoo, whole-model sizing
"""
from falcon.errors import FalconError
from falcon.spec import LayerSpec

__version__ = "0.1.0"
__all__ = ["FalconError", "LayerSpec", "__version__"]
