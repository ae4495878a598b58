"""Tunnels: the openvpn process, spawned and driven over its management connection.

A tunnel reports the neutral events of `vpnd.tunnel.events`. The package
imports nothing itself: the OpenVPN tunnel (`vpnd.tunnel.openvpn`) and its
management protocol are loaded at the first connect, not at start."""
