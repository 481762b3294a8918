"""The web app's blueprints, one a file, and the extensions they share."""

from flask_htmx import HTMX

htmx = HTMX()  # `if htmx:` tells an HTMX request (its HX-Request header) from a whole page load
