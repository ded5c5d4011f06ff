"""The edge companion (`meshgate edge`): a gRPC process beside the edge Envoys that answers the
questions Envoy can't answer alone. Today: request signatures, as Envoy's external
authorization service (ext_authz). Its config comes from meshgate's ADS server.

- `signing`: the signature schemes' verifier and meshgate's own scheme (pure);
- `rfc9421`: RFC 9421 HTTP Message Signatures (structured fields, signature base, hmac-sha256,
  ed25519, RFC 9530 content-digest; pure);
- `config`: the companion's xDS resource type and its translation from the IR;
- `server`: the gRPC server (ext_authz Check, gRPC health, Prometheus metrics) and its ADS client;
- `process`: the supervised `meshgate edge` subprocess that `meshgate run` starts.
"""
