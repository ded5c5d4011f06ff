"""The file provider: config documents from YAML files and folders, with hot reload.

- `discover`: which files a set of paths stands for (used both to load and to watch);
- `loader`: read them into `SourceDocument`s that remember the file and line of every field;
- `watch`: `FileProvider`, which loads and yields settled changes (inotify, via watchfiles);
- `safe_read`: `read_regular_file`, the one way meshgate reads a file a user named.
"""

from meshgate.providers.file.discover import (
    Discovery,
    discover,
    discover_files,
    named_files,
)
from meshgate.providers.file.loader import (
    DocumentCache,
    LoadResult,
    SourceDocument,
    load_documents,
    load_files,
)
from meshgate.providers.file.safe_read import (
    DEFAULT_MAX_FILE_BYTES,
    FileReadError,
    clip_value,
    read_regular_file,
)
from meshgate.providers.file.watch import FileProvider

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "Discovery",
    "DocumentCache",
    "FileProvider",
    "FileReadError",
    "LoadResult",
    "SourceDocument",
    "clip_value",
    "discover",
    "discover_files",
    "load_documents",
    "load_files",
    "named_files",
    "read_regular_file",
]
