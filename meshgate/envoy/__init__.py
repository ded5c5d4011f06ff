"""The Envoy side of `meshgate run`: the bootstrap that points an Envoy at meshgate's ADS server,
and the supervised Envoy process."""
