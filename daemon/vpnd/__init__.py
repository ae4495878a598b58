"""vpnd: a system daemon that connects Linux machines to VPN services, driven over D-Bus."""

__version__ = "0.1.0"
