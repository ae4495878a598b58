"""The openvpn child process: spawning, its management connection, teardown."""

from vpnd.tunnel.openvpn import Tunnel, TunnelEvent, TunnelExited, TunnelSettings

__all__ = ["Tunnel", "TunnelEvent", "TunnelExited", "TunnelSettings"]
