"""The operator's dashboard: mount it in your ASGI or WSGI app, or serve it with ``chimeway dashboard``.

::

    from chimeway.web import Dashboard

    dashboard = Dashboard(app, authorize=lambda request: "admin" if is_staff(request) else None)
    api.mount("/chimeway", dashboard)                  # FastAPI / Starlette
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app, {"/chimeway": dashboard})

Server-rendered HTML (Jinja2) with a small script that refreshes the live
parts of each page; no JavaScript build step and no extra dependency.
"""

from chimeway.web.dashboard import Dashboard
from chimeway.web.http import Request, Response

__all__ = ["Dashboard", "Request", "Response"]
