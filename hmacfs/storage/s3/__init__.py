"""An S3 (and Ceph radosgw) object store backend."""
