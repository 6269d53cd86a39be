"""`attrgate test`: PolicyTest suites run against a policy set through the server's own
pipeline, with coverage of the set's entries and tree, JSON and JUnit reports.

expand (matrix → cases) → suites (load, fixtures, references) → run (decide, compare) →
coverage → report; command is the CLI.
"""
