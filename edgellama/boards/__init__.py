"""The board layer: the catalog of boards and toolchains (boards/*.toml, toolchains/*.toml),
the memory planner, the builder with one target per OS kind, and the QEMU emulator."""
