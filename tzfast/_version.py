"""The single source of tzfast's version (read by pyproject.toml, CMakeLists.txt and tzfast)."""

__version__ = "0.1.0"
