"""The local mesh: config of every plane, process supervision, the sample corpus."""
