-- Upload VirtualHosts for $scheme slot URLs (rendered into prosody.cfg.lua once per scheme).

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
