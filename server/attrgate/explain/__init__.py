"""`attrgate explain`: collect (the server's answer and the engine's trace), render_text and
render_json (for reviewers, for tools), command (the CLI)."""
