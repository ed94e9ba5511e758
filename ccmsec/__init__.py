"""ccmsec: the security plane of an IP-telephony cluster."""

__version__ = "0.1.0"  # equals [project].version in pyproject.toml (a unit test keeps them equal)
