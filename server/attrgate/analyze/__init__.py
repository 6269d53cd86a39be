"""`attrgate analyze`: static analysis of a policy set, exact where the language allows it.

globalgebra  globs as automata: intersection, containment, emptiness, shortest witnesses
domains      the valid attribute names, user pool ids and callers, as automata over alphabets
world        the policies as the analysis sees them (entries with file:line) and their regions
values       what an allow entry's constraints accept: containment and sample values
checks, pools  the findings; counterexample  requests that show them, confirmed by the pipeline
report       text and JSON output, exit codes
"""
