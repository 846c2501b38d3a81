"""The phases of a move, each a tuple of named steps that reads like its runbook."""
