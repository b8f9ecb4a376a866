"""The experiments that test superpos's hypotheses; each returns results and writes a report."""
