"""The system's health: the heartbeat, who is alive, alerts and their delivery, the status report."""
