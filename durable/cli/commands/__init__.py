"""The commands, by area: each ``cmd_*`` takes the parsed arguments and returns the exit code."""
