"""The compliance console: a web view of the audit trail (``broker console``).

Layout of the package, from the outside in:

- :mod:`~broker.console.app`: the Starlette application, its routes and security headers;
- :mod:`~broker.console.sessions`: server-side sessions with expiry and a CSRF token each;
- :mod:`~broker.console.backend`: the gRPC client that calls the broker's Audit and Retention
  services *with the signed-in officer's own token*, so the broker decides who sees what;
- :mod:`~broker.console.search`: query-string filters <-> ``AuditFilter``, shareable URLs;
- :mod:`~broker.console.views`: what the entry and chart pages show, from entries and records;
- ``templates/`` (Jinja2, autoescaped) and ``static/`` (CSS, the page scripts, the in-browser
  proof verifier ``verify.js`` and the Chart.js file, all shipped with the package: no CDN).
"""
