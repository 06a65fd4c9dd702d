"""``ratebudget dashboard``: a local, read-only web page of a store and its
ledger (extra ``dashboard``: starlette and uvicorn, imported only when a
dashboard is served).

The page (``static/``: HTML, a small script, a style sheet; nothing from
the internet) polls a JSON API once a second: ``/api/status`` (the scope
tree, each limit's used, reserved and remaining, reset times and
forecasts), ``/api/burn`` (each USD cap's spend over its period),
``/api/report`` (top spenders by scope or label) and ``/api/alerts`` (the
newest alerts and refusals the ledger keeps). Store and ledger URLs are
shown without their passwords.

    with serve_in_thread(Source("sqlite:///budgets.db")) as url:
        ...  # open url in a browser
"""

from __future__ import annotations

from ._app import create_app as create_app
from ._server import MissingExtra as MissingExtra
from ._server import run as run
from ._server import serve_in_thread as serve_in_thread
from ._source import Source as Source

__all__ = ("MissingExtra", "Source", "create_app", "run", "serve_in_thread")
