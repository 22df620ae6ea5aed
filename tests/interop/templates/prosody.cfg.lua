-- Prosody 0.12 for the interop matrix (written by tests/interop/xmpp_servers.py).
-- One process, loopback only, run in the foreground as root from a per-session directory.
-- Each upload mode gets a VirtualHost of its own with exactly one upload component, so a
-- client discovering "the" upload service of its domain always exercises that mode.

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

VirtualHost "$v1_domain"
Component "upload.$v1_domain" "http_upload_external"
    http_upload_external_base_url = "$base_url/"
    http_upload_external_secret = "$secret"
    http_upload_external_file_size_limit = $xmpp_limit
    http_upload_external_protocol = "v1"

VirtualHost "$v2_domain"
Component "upload.$v2_domain" "http_upload_external"
    http_upload_external_base_url = "$base_url/"
    http_upload_external_secret = "$secret"
    http_upload_external_file_size_limit = $xmpp_limit
    http_upload_external_protocol = "v2"

VirtualHost "$jwt_domain"
Component "upload.$jwt_domain" "http_file_share"
    http_file_share_base_url = "$base_url"
    http_file_share_secret = "$secret"
    http_file_share_size_limit = $xmpp_limit
