"""Storage tiers over time: lifecycle rules and their jobs, fixity, capacity, access times.

- rules.py: ``[[lifecycle]]`` rules and the instances they select
- mover.py: the jobs that move, copy or drop objects between tiers
- compress.py: lossless compression on the way to a long-term tier
- fixity.py: re-reading objects against their SHA-256, repair from copies
- capacity.py: when each tier fills, and what three years need
- access.py: when a study was last read (for "not accessed for M days" and recall)
"""
