from .__about__ import __version__
from .check import LoopbackTrafficCheck

__all__ = ['__version__', 'LoopbackTrafficCheck']
