"""A local HTTP sandbox of the Instagram Graph API (graph-api.md): sends, windows, conversations,
throttles, rate limits and injected faults, driven over HTTP by :class:`SandboxControl`.

::

    server.py         HTTP/1.1 keep-alive server; SandboxServer (in-process, background thread)
    process.py        SandboxProcess (python -m dmworker.sandbox in a child process)
    cli.py            the command line (also `dmworker sandbox`)
    graph.py          the Graph endpoints: auth, gate, send, conversations, objects, token refresh
    validate.py       Meta-like Send API body validation -> SendSpec or code 100
    state.py          tokens (login, page, expiry, a token clock), windows, comments, records
    limits.py         throttles, sliding-second rate limits, fault plans
    conversations.py  conversations, messages, cursor paging
    records.py        the sends/requests logs read back by sequence number
    fields.py         the `fields=` parameter
    errors.py         every error answer the sandbox gives
    control_api.py    the /_sandbox/... endpoints; control.py their Python client
"""

from .control import SandboxControl, SandboxError
from .process import SandboxProcess
from .server import SandboxServer

__all__ = ["SandboxControl", "SandboxError", "SandboxProcess", "SandboxServer"]
