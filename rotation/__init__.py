"""AWS Secrets Manager rotation for Aurora PostgreSQL and PostgreSQL users."""

import time

__version__ = "0.1.0"

#: When the package began to load: Lambda's init imports the handler, and so this, first. The handler logs the
#: time from here to the end of its own import on a container's first invocation (rotation.observability).
IMPORT_STARTED = time.perf_counter()
