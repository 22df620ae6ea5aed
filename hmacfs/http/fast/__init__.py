"""Optional fast paths (quick answers, sendfile, splice, direct writes)."""
