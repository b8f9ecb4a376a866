"""Running experiments: the registry of every experiment folder, the one path that judges, saves and reports a run,
calibration against nulls and planted controls, ``run all`` and the replication grid."""
