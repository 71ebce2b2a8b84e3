"""The web console under `/ui`: server-rendered pages (Jinja2) with htmx, every asset in the
package (nothing fetched at run time). Screens: runs, registry (promote and roll back with an
admin key), the feedback queue, and a chat playground. A key logs in once (a cookie); forms
carry a CSRF token; every action lands in the audit table with the key's name."""

from kollm.serve.ui import ops  # noqa: F401  (registers the operations screens)
from kollm.serve.ui.routes import router

__all__ = ["router"]
