"""The C runtime seen from Python: building it for the host and calling it."""
