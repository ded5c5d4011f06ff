"""meshgate's resource model: load, validate and cross-check config documents.

    from meshgate.api import load_config, ConfigErrors
    try:
        translation = load_config(["gateway.yaml"])  # IR + a status per object
    except ConfigErrors as exc:
        for error in exc.errors:      # each: file, line, field, message
            print(error)
"""

from meshgate.api.config import load_config
from meshgate.errors import ConfigError, ConfigErrors, MeshgateError

__all__ = ["ConfigError", "ConfigErrors", "MeshgateError", "load_config"]
