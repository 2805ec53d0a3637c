"""Inter-process plumbing for ``background``: the shared-memory ring and the worker processes."""
