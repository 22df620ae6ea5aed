-- Prosody 0.12 for the interop matrix (written by tests/interop/xmpp_servers.py).
-- One process, loopback only, run in the foreground as root from a per-session directory.
-- Each upload mode and URL scheme gets a VirtualHost of its own with exactly one upload
-- component, so a client discovering "the" upload service of its domain always exercises
-- that mode with that scheme. The VirtualHosts are rendered from prosody-hosts.cfg.lua, once
-- per scheme (http and https base URL of hmacfs).
-- With `Prosody(websocket=True)` (the browser tests), the HTTP port serves WebSocket c2s.

run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { debug = "$dir/prosody.log" }

interfaces = { "127.0.0.1" }
c2s_ports = { $c2s_port }
-- Nothing else may listen: no s2s, no direct TLS, no external components, and no HTTP (the
-- upload components hand out URLs of hmacfs and do not need Prosody's own web server) unless
-- WebSocket clients need it: then plain HTTP on loopback, `http_ports = { PORT }`.
c2s_direct_tls_ports = {}
s2s_ports = {}
component_ports = {}
http_ports = { $http_ports }
https_ports = {}
modules_disabled = { "s2s" }
-- What a request for 127.0.0.1:PORT (no VirtualHost of that name) is routed to; a WebSocket
-- stream still picks its VirtualHost by its `to`.
http_default_host = "$http_default_host"
-- The WebSocket listener is plain HTTP on loopback; without this, c2s_require_encryption
-- would refuse to authenticate its streams.
consider_websocket_secure = true

-- With WebSocket clients also "websocket" and "blocklist" (Converse.js waits for XEP-0191
-- before it opens a chat with someone not in the roster).
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping"$extra_modules }
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
ssl = { certificate = "$certificate", key = "$key" }
certificates = "$certdir"

$virtual_hosts
