"""The device layer: where a model runs and how to reach it (local, SSH, serial, emulated),
the serial protocol, flashing, benchmarks with their history, and the OpenAI server."""
