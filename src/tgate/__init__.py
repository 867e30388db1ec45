"""tgate: a polyglot socket gateway in the model of neko.net.ServerLoop."""

__version__ = "0.1.0"
