"""Omniwise's domain logic, shared by the web app and the worker. Never imports Flask."""
