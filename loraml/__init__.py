"""loraml: the application layer (command line and figures) on top of ``theory`` and ``sims``."""

__version__ = "0.1.0"
