"""A uvicorn server for tests that serve an app in-process, on the test's own event loop.

uvicorn's `serve()` in the main thread installs its SIGTERM/SIGINT handlers and, when it returns, puts back the
ones it found. Two servers started one after the other and stopped in the same order restore the wrong handlers:
the first server's `handle_exit` stays installed, with `should_exit` set. sse-starlette reads that handler to
learn whether the server is shutting down, so every event stream the process served afterwards ended at once
(in CI: `test_stream_of_a_failed_saga_answered_directly_ends_with_its_answer` failed with an incomplete response
after the rate-limit tests' two gateways). A test server has no business with the process's signals."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn


class InProcessServer(uvicorn.Server):
    """`uvicorn.Server` that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install no handler: the test stops the server by setting `should_exit`."""
        yield
