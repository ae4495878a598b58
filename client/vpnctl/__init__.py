"""vpnctl, the command-line client of vpnd: parse arguments, call D-Bus, render results."""
