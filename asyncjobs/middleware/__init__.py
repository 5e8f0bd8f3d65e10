"""Middleware: the onion of async callables that wraps every handler."""
