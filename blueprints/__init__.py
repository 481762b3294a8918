"""Flask blueprints: thin views that read the request, call core/, and render."""
