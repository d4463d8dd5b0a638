"""Ways to reach a board: SSH (`ssh.py`) for Linux boards; serial and emulated boards elsewhere."""
