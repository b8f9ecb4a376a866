"""What an experiment is: its typed result (read back from results.json), the report writer, and the registry entry
(``Experiment``) each experiment folder under ``superpos.hypotheses`` declares."""
