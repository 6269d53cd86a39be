"""`attrgate analyze`: static analysis of a policy set, exact where the language allows it.

globalgebra  globs as automata: intersection, containment, emptiness, shortest witnesses
domains      the valid attribute names, user pool ids and callers, as automata over alphabets
world        the policies as the analysis sees them (entries with file:line) and their regions
values       what an allow entry's constraints accept: containment and sample values
analysis    one run of the checks: policies, entries, pools (the findings)
counterexample  requests that show them, confirmed by the pipeline before printing
report       text and JSON output, exit codes
"""
