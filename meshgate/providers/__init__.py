"""Where objects come from: files now (`file`), Kubernetes and Consul next. Each provider fills a
store of resources with their origin; nothing downstream knows where a resource came from except
for error messages."""
