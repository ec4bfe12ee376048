"""softcart-sync, the program: the command line, the daemon's supervisor and its wiring, settings,
logs, metrics, health. The capture side is in ``cdc.capture``, the operator's commands in
``cdc.ops``, development tools (not the daemon) in ``cdc.dev``. It imports ``loader`` and
``transform``; nothing imports it."""
