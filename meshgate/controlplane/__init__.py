"""The control plane's moving parts: the reload pipeline (`pipeline`), make-before-break staged
publishing (`publish`), what the ADS server observes (`status`) and the HTTP status server
(`status_server`)."""
