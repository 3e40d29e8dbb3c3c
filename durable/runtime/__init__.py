"""The runtime: what runs tasks. The worker (claim loop, slots, wake-up, drain), the executor (one
run), the task context, leases and heartbeats, deadlines, group commit, cron and retention. It is
given a registry of task definitions and a client; it never sees the app."""
