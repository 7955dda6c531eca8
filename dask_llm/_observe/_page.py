"""The dask-llm page on the scheduler's dashboard: ``/dask-llm/`` and its JSON.

Plain HTML (``page.html`` beside this module) that polls ``api/jobs.json``
every second and draws with inline SVG: no bokeh, no CDN, so it works on
any scheduler (bokeh installed or not) and offline. The routes are added to the scheduler's running HTTP server
(its tornado application) when the coordinator plugin starts; they look the
plugin up per request, so a re-registered plugin is served, not a stale one.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import time
from typing import Any

__all__ = ["PAGE_PATH", "install_routes", "page_link", "status"]

#: Where the page is, under the dashboard's prefix.
PAGE_PATH = "dask-llm/"


def status(plugin: Any) -> dict[str, Any]:
    """What the page shows: the jobs, the budgets and their holders' shares, the spend caps."""
    now = time.time()
    state = plugin.state
    budgets = []
    for name, entry in state.budgets.items():
        alloc = entry.allocator
        budgets.append({
            "name": name,
            "rpm": alloc.rpm, "tpm": alloc.tpm, "max_concurrency": alloc.max_concurrency,
            "adaptive": bool(alloc.adaptive),
            "holders": {
                holder: {"rpm": h.rpm, "tpm": h.tpm, "slots": h.slots if alloc.max_concurrency is not None else None}
                for holder, h in sorted(alloc.holders.items())
            },
        })  # fmt: skip
    spend = [
        {"name": name, "max_cost": ledger.max_cost, "max_tokens": ledger.max_tokens, **ledger.snapshot()}
        for name, ledger in state.ledgers.items()
    ]
    return {"time": now, "jobs": plugin.board.summaries(now), "budgets": budgets, "spend": spend}


def page_link(dashboard_link: str | None) -> str | None:
    """The page's URL from the dashboard's (``.../status``), keeping its host and prefix."""
    if not dashboard_link:
        return None
    base = dashboard_link.rsplit("/", 1)[0] if dashboard_link.rstrip("/").endswith("status") else dashboard_link
    return base.rstrip("/") + "/" + PAGE_PATH


def install_routes(scheduler: Any, plugin_name: str) -> None:
    """Add the page's routes to the scheduler's HTTP server, once per server."""
    app = getattr(scheduler, "http_application", None)
    if app is None or getattr(app, "_dask_llm_routes", False):
        return
    import tornado.web

    class _Handler(tornado.web.RequestHandler):
        def initialize(self, scheduler: Any) -> None:
            self.dask_scheduler = scheduler

        def plugin(self) -> Any:
            plugin = self.dask_scheduler.plugins.get(plugin_name)
            if plugin is None:
                raise tornado.web.HTTPError(404)
            return plugin

    class PageHandler(_Handler):
        def get(self) -> None:
            self.plugin()
            if not self.request.path.endswith("/"):
                # The page's links are relative to the folder.
                self.redirect(self.request.path + "/", permanent=False)
                return
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.write(page())

    class JobsHandler(_Handler):
        def get(self) -> None:
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            self.write(json.dumps(status(self.plugin()), default=str))

    prefix = _prefix(app)
    kwargs = {"scheduler": scheduler}
    app.add_handlers(
        r".*",
        [
            (rf"{prefix}dask-llm/?", PageHandler, kwargs),
            (rf"{prefix}dask-llm/api/jobs\.json", JobsHandler, kwargs),
        ],
    )
    app._dask_llm_routes = True


def _prefix(app: Any) -> str:
    """The dashboard's URL prefix (``dask scheduler --dashboard-prefix``): the
    scheduler does not keep it, its health route shows it."""
    for rule in getattr(app, "wildcard_router", app.default_router).rules:
        pattern = getattr(rule.matcher, "regex", None)
        text = pattern.pattern if pattern is not None else ""
        if text.endswith("health$"):
            return text.removesuffix("health$")
    return "/"


@functools.cache
def page() -> str:
    """The page's HTML (one file, scripts and styles inline)."""
    return importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
