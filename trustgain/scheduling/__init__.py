"""SCHEDULE-phase stages: choose the backend and the number of inference steps per request."""
