"""The dashboard: ``/`` (every target at a glance) and ``/targets/{name}`` (one target's page).

Server-rendered HTML first, so every value can be read without JavaScript; a small script served
by canaryd itself (``static/dashboard.js``, no CDN) refreshes the live part of the page in place
and sends the operator's actions to the JSON API with a token typed into the page.

The package is split by concern: ``gather`` reads what a page shows (off the event loop) into
the plain records of ``facts``; ``index`` and ``target`` turn those into markup with the helpers
of ``markup`` and the SVG charts of ``charts``; ``assets`` serves the stylesheet and the script
(``static/``).
Only ``gather`` touches the runtime and the store: the renderers are pure functions of their
records, which keeps the escaping reviewable in one place and the pages testable without a
server.
"""
