"""One report writer per experiment: ``write_report(result, folder)`` turns a typed result into report.md,
report.html and the figures (``superpos.experiment.report.Report``). Writers read only the result (and, for orthogonality,
the raw max-|cos| arrays its histogram needs)."""
