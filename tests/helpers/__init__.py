"""What tests (and the benchmarks) share that is not a fixture.

- `signing`: the secret and independent implementations of the signature schemes;
- `config`: configurations, in memory (`make_config`) and as the TOML a server reads;
- `files`: what a storage directory holds, as a client or the storage itself sees it;
- `server`: the real server as a child process on port 0 (`start_server`, `Server`);
- `client`: curl as the tests run it.

The modules import nothing from pytest; `server`, `client` and `signing` not even hmacfs, so
the benchmarks can start the server the same way while running another interpreter's copy.
"""
