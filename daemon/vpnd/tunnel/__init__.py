"""Tunnels: the openvpn process, spawned and driven over its management connection.

A tunnel reports the neutral events of `vpnd.tunnel.events`."""

from vpnd.tunnel.events import TunnelEvent, TunnelExited
from vpnd.tunnel.openvpn import Tunnel, TunnelSettings

__all__ = ["Tunnel", "TunnelEvent", "TunnelExited", "TunnelSettings"]
