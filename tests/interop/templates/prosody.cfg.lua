-- Prosody 0.12 for the interop matrix (written by tests/interop/xmpp_servers.py).
-- One process, loopback only, run in the foreground as root from a per-session directory.
-- Each upload mode and URL scheme gets a VirtualHost of its own with exactly one upload
-- component, so a client discovering "the" upload service of its domain always exercises
-- that mode with that scheme. The VirtualHosts are rendered from prosody-hosts.cfg.lua, once
-- per scheme (http and https base URL of hmacfs).

run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { debug = "$dir/prosody.log" }

interfaces = { "127.0.0.1" }
c2s_ports = { $c2s_port }
-- Nothing else may listen: no s2s, no direct TLS, no HTTP (the upload components hand out
-- URLs of hmacfs and do not need Prosody's own web server), no external components.
c2s_direct_tls_ports = {}
s2s_ports = {}
component_ports = {}
http_ports = {}
https_ports = {}
modules_disabled = { "s2s" }

modules_enabled = { "roster", "saslauth", "tls", "disco", "ping" }
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
ssl = { certificate = "$certificate", key = "$key" }
certificates = "$certdir"

$virtual_hosts
