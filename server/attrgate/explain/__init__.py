"""`attrgate explain`: collect (the server's answer and the engine's trace), render (text, JSON),
command (the CLI)."""
